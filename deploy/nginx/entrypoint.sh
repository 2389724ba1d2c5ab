#!/bin/sh
# Start nginx with a certificate: the one mounted in /etc/nginx/tls (cert.pem and key.pem), or a
# self-signed one made here on first start (kept in that volume, never in the image).
set -eu
mkdir -p /tmp/nginx
if [ ! -s /etc/nginx/tls/cert.pem ] || [ ! -s /etc/nginx/tls/key.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
        -subj "/CN=${TLS_COMMON_NAME:-localhost}" \
        -addext "subjectAltName=DNS:${TLS_COMMON_NAME:-localhost},IP:127.0.0.1" \
        -keyout /etc/nginx/tls/key.pem -out /etc/nginx/tls/cert.pem 2>/dev/null
    chmod 600 /etc/nginx/tls/key.pem
    echo "todo-proxy: made a self-signed certificate for ${TLS_COMMON_NAME:-localhost}" >&2
fi
exec "$@"
