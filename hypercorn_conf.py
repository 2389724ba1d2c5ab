"""Hypercorn settings for the container and ``make run``.

Loading this file (``hypercorn --config file:hypercorn_conf.py asgi:app``)
runs in hypercorn's master process before any worker starts: it refuses an
unsafe production setup or an older database schema with a non-zero exit,
prepares the metrics directory the workers share, and starts the embedded
database when no MONGO_URI is set (development only). Command-line flags
(``--bind``, ``--workers``) override the values below.
"""

import os
import sys

# Hypercorn's entry script does not put the project on sys.path before this
# file runs (it does for the app, later).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from app.serving import prepare_to_serve, raise_open_file_limit

prepare_to_serve()
raise_open_file_limit()  # inherited by every worker

# Loopback unless told otherwise: only production (the container, which also
# sets BIND) listens on every interface by default.
_DEFAULT_BIND = "0.0.0.0:8000" if os.environ.get("APP_ENV") == "production" else "127.0.0.1:8000"
bind = [os.environ.get("BIND") or _DEFAULT_BIND]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "uvloop"
# The app writes its own access log line (with the request id); hypercorn's is off.
accesslog = None
errorlog = "-"
# Seconds a connection may sit idle, or send a request's head (partial
# headers count as idle): thousands of idle sockets must not pin a worker's
# file descriptors. Hypercorn belongs behind a proxy (docs/security.md): the
# proxy's upstream keep-alive must be shorter than this, so the proxy closes
# first and never sends on a socket hypercorn just closed. Bodies that
# trickle in are bounded by the app's BODY_TIMEOUT.
keep_alive_timeout = int(os.environ.get("KEEP_ALIVE_SECONDS", "5"))
# In-flight requests get this long after SIGTERM; under Docker's 10 s stop timeout.
graceful_timeout = 8
# No version banner (Server: hypercorn-h11).
include_server_header = False
