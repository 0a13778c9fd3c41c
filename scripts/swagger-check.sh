#!/usr/bin/env bash
# Opens billing-api's Swagger UI in headless Chromium (no network beyond 127.0.0.1) and checks
# that the operations list rendered: Swagger UI's JavaScript must have fetched
# /api-docs/openapi.json and drawn one `opblock` per operation.
#
# Usage: scripts/swagger-check.sh [--screenshot FILE]
# Env:   DATABASE_URL (server to create a temporary database on; default
#        postgres://postgres@127.0.0.1:5432/postgres), SWAGGER_CHECK_PORT (default 18089).
set -euo pipefail
cd "$(dirname "$0")/.."

screenshot=""
if [[ "${1:-}" == "--screenshot" ]]; then screenshot="${2:?--screenshot needs a file}"; fi

base_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
port="${SWAGGER_CHECK_PORT:-18089}"
db="swagger_check_$$"
db_url="${base_url%/*}/${db}"
work="$(mktemp -d)"
api_pid=""

cleanup() {
    if [[ -n "$api_pid" ]]; then kill "$api_pid" 2>/dev/null || true; wait "$api_pid" 2>/dev/null || true; fi
    psql "$base_url" -qc "DROP DATABASE IF EXISTS ${db}" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

chromium_bin="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$chromium_bin" ]]; then
    echo "chromium not found; installing Debian's chromium" >&2
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    chromium_bin="$(command -v chromium)"
fi

cargo build -q -p billing-api
psql "$base_url" -qc "CREATE DATABASE ${db}" >/dev/null

keys="k1:$(head -c 32 /dev/urandom | base64 -w0)"
DATABASE_URL="$db_url" API_ADDR="127.0.0.1:${port}" BILLING_ENCRYPTION_KEYS="$keys" \
    RUST_LOG=warn target/debug/billing-api --migrate >"$work/api.log" 2>&1 &
api_pid=$!

# Wait for the API with a deadline instead of a fixed sleep.
deadline=$((SECONDS + 60))
until curl -fs "http://127.0.0.1:${port}/readyz" >/dev/null; do
    if ((SECONDS > deadline)) || ! kill -0 "$api_pid" 2>/dev/null; then
        echo "billing-api did not become ready:" >&2; cat "$work/api.log" >&2; exit 1
    fi
    sleep 0.2
done

flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
    --disable-background-networking --disable-component-update --disable-sync
    --user-data-dir="$work/profile" --virtual-time-budget=10000)
"$chromium_bin" "${flags[@]}" --dump-dom "http://127.0.0.1:${port}/swagger-ui/" \
    >"$work/dom.html" 2>"$work/chromium.log" || true
if [[ -n "$screenshot" ]]; then
    "$chromium_bin" "${flags[@]}" --window-size=1280,2400 --screenshot="$(realpath -m "$screenshot")" \
        "http://127.0.0.1:${port}/swagger-ui/" 2>>"$work/chromium.log" || true
fi

opblocks=$(grep -o 'class="opblock opblock-[a-z]*' "$work/dom.html" | wc -l)
missing=()
for path in /v1/bills /v1/bills/batch '/v1/bills/{id}' '/v1/bills/{id}/deliveries' /v1/stats /healthz; do
    grep -qF "data-path=\"${path}\"" "$work/dom.html" || missing+=("$path")
done
if ((opblocks == 0)) || ((${#missing[@]} > 0)); then
    echo "FAIL: Swagger UI did not render the operations (opblocks=${opblocks}, missing: ${missing[*]:-none})" >&2
    tail -5 "$work/chromium.log" >&2
    exit 1
fi
echo "OK: Swagger UI rendered ${opblocks} operations, including every /v1/bills path${screenshot:+ (screenshot: $screenshot)}"
