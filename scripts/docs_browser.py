"""Open /docs in headless Chromium, offline, and check that it renders the whole API.

Starts the real server, loads the explorer with every host other than the
loopback unresolvable, waits for Swagger UI to render, and checks that every
path of /openapi.json is listed and that no request left the machine (from
Chromium's own network log). Saves a screenshot for the README.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from scripts.devserver import ROOT, call, serving

BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # Only the loopback resolves: anything else the page asked for would fail, and show.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--virtual-time-budget=15000",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("Chromium is not installed: `make browser` installs Debian's chromium package")


def browse(url: str, profile: Path, *extra: str) -> str:
    result = subprocess.run(
        [chromium(), *BROWSER_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def page_request_hosts(net_log: Path, origin: str) -> set[str]:
    """Hosts of every request the page made (NetLog events it initiated).

    Chromium's own background traffic has no page initiator and is left out.
    """
    events = json.loads(net_log.read_text(errors="replace"))["events"]
    return {
        urlsplit(params["url"]).hostname or ""
        for params in (event.get("params", {}) for event in events)
        if "url" in params and params.get("initiator") == origin
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "explorer.png")
    args = parser.parse_args()
    failures: list[str] = []
    with serving() as port, tempfile.TemporaryDirectory() as scratch:
        url = f"http://127.0.0.1:{port}/docs"
        spec_paths = set(call(port, "GET", "/openapi.json")[1]["paths"])
        net_log = Path(scratch) / "netlog.json"
        dom = browse(url, Path(scratch) / "profile-dom", "--dump-dom", f"--log-net-log={net_log}")
        listed = set(re.findall(r'data-path="([^"]+)"', dom))
        if missing := spec_paths - listed:
            failures.append(f"paths not rendered: {sorted(missing)}")
        hosts = page_request_hosts(net_log, f"http://127.0.0.1:{port}")
        if not hosts:
            failures.append("the network log shows no request from the page")
        if outside := hosts - LOCAL_HOSTS:
            failures.append(f"requests left the machine: {sorted(outside)}")
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        browse(
            url,
            Path(scratch) / "profile-shot",
            f"--screenshot={args.screenshot}",
            "--window-size=1280,1600",
        )
    print(
        json.dumps(
            {
                "paths_in_spec": len(spec_paths),
                "paths_rendered": len(listed & spec_paths),
                "hosts_the_page_contacted": sorted(hosts),
                "screenshot": str(args.screenshot),
            },
            indent=2,
        )
    )
    for failure in failures:
        print("FAIL:", failure)
    print("browser check:", "FAILED" if failures else "ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
