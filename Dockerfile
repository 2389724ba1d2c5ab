# The API in production: hypercorn serving asgi:app, configured by hypercorn_conf.py.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    APP_ENV=production \
    BIND=0.0.0.0:8000

WORKDIR /srv
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# The code belongs to root and is read-only to the server's user: a compromised
# process cannot rewrite what it runs. Production needs no writable instance folder.
RUN useradd --create-home --uid 10001 api
COPY app ./app
COPY config.py asgi.py hypercorn_conf.py ./
COPY instance/README.md ./instance/README.md
USER api

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
# Exec form: hypercorn runs as PID 1 and receives SIGTERM itself (graceful stop).
# It refuses (exit 75) a database whose schema is older than this image: run the
# release step first, once per release, with the same settings (compose.yaml's
# migrate service; a Kubernetes Job):
#   docker run --rm -e MONGO_URI=... -e JWT_SECRET_KEY=... IMAGE python -m app db upgrade
CMD ["hypercorn", "--config", "file:hypercorn_conf.py", "asgi:app"]
