#!/bin/sh
# Container entrypoint: optionally wait for dependencies, then exec vsm (as PID 1, so that
# SIGTERM reaches it directly and it stops gracefully).
#
#   WAIT_FOR="postgres:5432 redis:6379"  wait for these HOST:PORTs first (default: none)
#   WAIT_TIMEOUT=60                       seconds before giving up (exit 1)
#
# Arguments are a vsm command (`serve`, `work`, `migrate`, `all`, `tenant create SLUG`, ...);
# anything else that names a program (e.g. `sh`) is run as is, for debugging.
set -eu

# Compose passes `${VAR:-}` for optional settings; an empty value means "not set", and vsm
# would otherwise read it as an (invalid or empty) value.
for var in DATABASE_URL REDIS_URL RABBITMQ_URL VSM_LISTEN VSM_ADMIN_TOKEN VSM_LOG \
           VSM_LOG_FORMAT VSM_ENV TELEGRAM_BOT_TOKEN TELEGRAM_WEBHOOK_SECRET \
           AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
    eval "value=\${$var-}"
    # shellcheck disable=SC2154 # assigned by the eval above
    if [ -z "$value" ]; then
        unset "$var"
    fi
done
unset value var

if [ -n "${WAIT_FOR:-}" ]; then
    # shellcheck disable=SC2086 # WAIT_FOR is a space-separated list
    wait-for-it.sh -t "${WAIT_TIMEOUT:-60}" $WAIT_FOR
fi

if [ "$#" -eq 0 ]; then
    set -- serve
fi

case "$1" in
    serve|work|migrate|all|tenant|help|-*)
        exec vsm "$@"
        ;;
esac

if [ "$1" != vsm ] && command -v "$1" >/dev/null 2>&1; then
    exec "$@"
fi
[ "$1" = vsm ] && shift
exec vsm "$@"
