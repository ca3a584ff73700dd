#!/bin/sh
# healthcheck.sh [PORT] [PATH]: exit 0 when http://127.0.0.1:PORT/PATH answers 2xx, else 1.
# PORT defaults to $HEALTHCHECK_PORT or 4000 (vsm serve); vsm work serves its probes on 4001.
# PATH defaults to /health, which answers without calling any dependency.
set -eu

port=${1:-${HEALTHCHECK_PORT:-4000}}
path=${2:-/health}
url="http://127.0.0.1:${port}${path}"

if command -v curl >/dev/null 2>&1; then
    curl --fail --silent --show-error --max-time 3 --output /dev/null "$url" || exit 1
elif command -v wget >/dev/null 2>&1; then
    wget -q -T 3 -O /dev/null "$url" || exit 1
else
    echo "healthcheck: neither curl nor wget is available" >&2
    exit 1
fi
