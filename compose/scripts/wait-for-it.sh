#!/bin/sh
# wait-for-it.sh: wait until every HOST:PORT accepts TCP connections, then optionally run a command.
#
#   wait-for-it.sh [-t SECONDS] [-q] HOST:PORT [HOST:PORT...] [-- COMMAND [ARGS...]]
#
# -t  overall timeout in seconds (default 60; 0 = wait forever)
# -q  quiet: no progress messages
# Exit status: 0 when all are reachable (or COMMAND's status), 1 on timeout, 2 on bad usage.
# Probes with `nc -z` when available, otherwise bash's /dev/tcp.
set -eu

timeout=60
quiet=0
targets=""

usage() {
    echo "usage: $0 [-t SECONDS] [-q] HOST:PORT [HOST:PORT...] [-- COMMAND [ARGS...]]" >&2
    exit 2
}

say() {
    [ "$quiet" -eq 1 ] || echo "wait-for-it: $*" >&2
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        -t) [ "$#" -ge 2 ] || usage; timeout=$2; shift 2 ;;
        -t*) timeout=${1#-t}; shift ;;
        -q) quiet=1; shift ;;
        --) shift; break ;;
        -*) usage ;;
        *:*) targets="$targets $1"; shift ;;
        *) usage ;;
    esac
done
[ -n "$targets" ] || usage
case "$timeout" in
    ''|*[!0-9]*) usage ;;
esac

# probe HOST PORT: succeeds when a TCP connection can be opened within ~2 s.
probe() {
    if command -v nc >/dev/null 2>&1; then
        nc -z -w 2 "$1" "$2" >/dev/null 2>&1
    elif command -v bash >/dev/null 2>&1; then
        # shellcheck disable=SC2016 # expanded by the inner bash, not here
        timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' probe "$1" "$2" >/dev/null 2>&1
    else
        echo "wait-for-it: neither nc nor bash is available" >&2
        exit 2
    fi
}

start=$(date +%s)
for target in $targets; do
    host=${target%:*}
    port=${target##*:}
    say "waiting for $host:$port (timeout ${timeout}s)"
    until probe "$host" "$port"; do
        now=$(date +%s)
        if [ "$timeout" -gt 0 ] && [ $((now - start)) -ge "$timeout" ]; then
            echo "wait-for-it: timed out after ${timeout}s waiting for $host:$port" >&2
            exit 1
        fi
        sleep 1
    done
    say "$host:$port is up"
done

if [ "$#" -gt 0 ]; then
    exec "$@"
fi
