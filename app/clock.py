"""Time as the API and the database see it: UTC, millisecond precision.

BSON dates hold milliseconds, so truncating here keeps what a client is told
and what the database stores identical.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def truncate_ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def utcnow() -> datetime:
    return truncate_ms(datetime.now(UTC))


def format_timestamp(moment: datetime) -> str:
    """``2026-11-23T18:24:17.123Z``: ``isoformat`` (in C, and four-digit years
    below 1000, which ``strftime("%Y")`` leaves unpadded) with ``Z`` for ``+00:00``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_timestamp(text: str) -> datetime:
    """Parse RFC 3339 with an offset, normalise to UTC, truncate to milliseconds.

    Raises ``ValueError`` for dates without a time, naive times and impossible dates.
    """
    if not RFC3339.fullmatch(text):
        raise ValueError("must be an RFC 3339 timestamp with an offset, e.g. 2026-12-01T09:00:00Z")
    fraction = re.search(r"\.(\d+)", text)
    if fraction:  # fromisoformat takes at most 6 digits; keep the first 3
        text = text.replace(fraction.group(0), "." + fraction.group(1)[:3].ljust(3, "0"), 1)
    moment = datetime.fromisoformat(text.upper())
    try:
        return truncate_ms(moment.astimezone(UTC))
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValueError("is outside the years 0001 to 9999 in UTC") from None
