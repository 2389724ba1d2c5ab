"""The module-level ASGI app for ``hypercorn asgi:app``.

``create_app`` is async but creates nothing bound to an event loop (clients
start in ``before_serving``), so running it to completion here is safe.
"""

import asyncio

from app import create_app

app = asyncio.run(create_app())
