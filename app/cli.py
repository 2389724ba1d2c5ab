"""Commands of Quart's CLI: ``db upgrade`` and ``db status``.

Like flaskr's ``flask init-db``, they are commands on ``app.cli``, run with
``quart --app asgi:app db upgrade`` or, through the thin entry point in
``app/__main__.py``, ``python -m app db upgrade`` (the form the container,
compose.yaml and Kubernetes use). They run against the app the factory
builds, with its settings, and open and close a database client of their own.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from pymongo.errors import PyMongoError
from quart import Quart
from quart.cli import AppGroup, ScriptInfo

from . import migrations
from .extensions import mongo

T = TypeVar("T")
#: Exit statuses: the lock stayed taken (EX_TEMPFAIL), the database could not be reached
#: (EX_UNAVAILABLE), no database is configured (EX_CONFIG).
EXIT_BUSY = 75
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78

db = AppGroup("db", help="The database schema: apply pending migrations, or list them.")


def _run(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` in the app's context with a database client of its own."""
    app: Quart = click.get_current_context().ensure_object(ScriptInfo).load_app()
    if not app.config["MONGO_URI"]:
        click.echo(
            "db: MONGO_URI is not set (the embedded database runs only beside the server: "
            "point MONGO_URI at it, or at MongoDB)",
            err=True,
        )
        sys.exit(EXIT_CONFIG)

    async def with_client() -> T:
        async with app.app_context():
            await mongo.connect()
            try:
                return await work()
            finally:
                await mongo.disconnect()

    try:
        return asyncio.run(with_client())
    except PyMongoError as error:
        click.echo(f"db: the database could not be reached ({type(error).__name__})", err=True)
        sys.exit(EXIT_UNAVAILABLE)


@db.command("upgrade")
@click.option(
    "--wait",
    default=migrations.WAIT_SECONDS,
    show_default=True,
    help="Seconds to wait while another upgrade holds the lock.",
)
def upgrade(wait: float) -> None:
    """Apply every pending migration (indexes, collection options, data), each once."""
    logging.getLogger("app").setLevel(logging.INFO)
    try:
        applied = _run(lambda: migrations.upgrade(wait_seconds=wait))
    except (migrations.UpgradeBusy, migrations.LockLost) as error:
        click.echo(f"db upgrade: {error}", err=True)
        sys.exit(EXIT_BUSY)
    if applied:
        click.echo(f"applied {len(applied)}: {', '.join(applied)}")
    else:
        click.echo("the schema is current; nothing to apply")


@db.command("status")
def status() -> None:
    """List this version's migrations, applied and pending; exit 1 if any is pending."""
    steps, unknown = _run(migrations.status)
    for step in steps:
        when = step.applied_at.isoformat(timespec="seconds") if step.applied_at else "pending"
        click.echo(f"{when:25}  {step.id}  {step.description}")
    for step_id in unknown:
        click.echo(f"{'applied (newer version)':25}  {step_id}")
    if any(step.applied_at is None for step in steps):
        sys.exit(1)
