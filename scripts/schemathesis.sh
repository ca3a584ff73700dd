#!/usr/bin/env bash
# Fuzzes the running API against its own OpenAPI document with schemathesis (PyPI): every
# documented route gets a bounded number of generated requests; any 5xx, undocumented status,
# wrong content type or response that breaks the schema fails the run.
# Needs: a built target/debug/vsm, PostgreSQL on 127.0.0.1:5432, schemathesis on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${SCHEMATHESIS_EXAMPLES:-25}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
db="vsm_schemathesis_$$"
admin="schemathesis-admin-$$"
log=$(mktemp)
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" VSM_ADMIN_TOKEN="$admin" VSM_LOG=warn
# The limiter would answer 429 to a fuzzer's burst; it has its own tests.
export VSM_RATE_LIMIT__REQUESTS_PER_SECOND=0
"${VSM_BIN:-${CARGO_TARGET_DIR:-target}/debug/vsm}" all --listen "127.0.0.1:$port" >"$log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/ready" >/dev/null && break
  sleep 0.2
done
key=$(curl -fs -X POST "http://127.0.0.1:$port/v1/tenants" -H "authorization: Bearer $admin" \
  -H 'content-type: application/json' -d '{"slug":"schemathesis"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
# Each run carries the credential its operations take, so none is fuzzed only as far as 401.
# With the tenant's key: all but /v1/events, an endless stream (tests/events.rs covers it),
# and the operations below.
schemathesis run "http://127.0.0.1:$port/openapi.json" -H "Authorization: Bearer $key" \
  -c "$checks" -n "$examples" --exclude-path /v1/events --exclude-path /v1/tenants \
  --exclude-path '/v1/queues/{name}/{action}' \
  --exclude-path-regex '^/dashboard/(health|session|sign-out)$'
# With the admin token: tenant creation and pausing or resuming a queue.
schemathesis run "http://127.0.0.1:$port/openapi.json" -H "Authorization: Bearer $admin" \
  -c "$checks" -n "$examples" --include-path-regex '^/v1/(tenants|queues/\{name\}/\{action\})$'
# With a dashboard session (cookie, and the CSRF token its POSTs need), signed in as the
# operator from the site's own origin as the page does.
origin="http://127.0.0.1:$port"
session=$(curl -fs -D - -o "$log.session" -X POST "$origin/dashboard/sign-in" -H "origin: $origin" \
  -H 'content-type: application/json' -d "{\"credential\":\"$admin\"}" |
  sed -n 's/^set-cookie: \([^;]*\).*/\1/ip')
csrf=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["csrf_token"])' "$log.session")
rm -f "$log.session"
# Signing out ends the session, so it runs after the reads.
for path in '^/dashboard/(health|session)$' '^/dashboard/sign-out$'; do
  schemathesis run "$origin/openapi.json" -H "Cookie: $session" -H "Origin: $origin" \
    -H "X-CSRF-Token: $csrf" -c "$checks" -n "$examples" --include-path-regex "$path"
done
if grep -q "internal error" "$log"; then
  echo "schemathesis: the server logged internal errors:" >&2
  grep "internal error" "$log" >&2
  exit 1
fi
