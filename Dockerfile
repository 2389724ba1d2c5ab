# The API in production: hypercorn serving asgi:app, configured by hypercorn_conf.py.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    APP_ENV=production

WORKDIR /srv
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

RUN useradd --create-home --uid 10001 api
COPY --chown=api:api app ./app
COPY --chown=api:api config.py asgi.py hypercorn_conf.py ./
COPY --chown=api:api instance/README.md ./instance/README.md
USER api

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
# Exec form: hypercorn runs as PID 1 and receives SIGTERM itself (graceful stop).
CMD ["hypercorn", "--config", "file:hypercorn_conf.py", "asgi:app"]
