"""``python -m app db upgrade``: the app's CLI commands, against the factory's app.

A thin entry point for images without the ``quart`` script on the path or a
``QUART_APP`` setting; ``quart --app asgi:app db upgrade`` runs the same command.
"""

import asyncio

from quart.cli import ScriptInfo

from . import create_app


def main() -> None:
    app = asyncio.run(create_app())
    app.cli.main(prog_name="python -m app", obj=ScriptInfo(create_app=lambda: app))


if __name__ == "__main__":
    main()
