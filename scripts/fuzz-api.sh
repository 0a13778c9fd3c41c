#!/usr/bin/env bash
# Fuzzes billing-api from its checked-in OpenAPI document with schemathesis: the examples,
# coverage, fuzzing and stateful phases, every check, with the admin token. Fails on any
# server error, response-schema violation or other failed check.
#
# Usage: scripts/fuzz-api.sh [--quick] [-- ST_RUN_ARGS...]
#   --quick                 bounded run for CI (FUZZ_MAX_EXAMPLES defaults to 50 instead of 100;
#                           about 1,500 cases in under a minute)
# Env:   DATABASE_URL       server to create a throwaway database on
#                           (default postgres://postgres@127.0.0.1:5432/postgres); on a bare
#                           machine run it as `cargo xtask env -- scripts/fuzz-api.sh`
#        FUZZ_MAX_EXAMPLES  schemathesis --max-examples per operation and phase
#        FUZZ_PORT          port of the api under test (default 18090)
#        FUZZ_VENV          venv holding schemathesis (default ~/.cache/billing-outbox/venv)
#        FUZZ_SEED          hypothesis seed (default: random, printed by schemathesis)
set -euo pipefail
cd "$(dirname "$0")/.."

max_examples="${FUZZ_MAX_EXAMPLES:-100}"
if [[ "${1:-}" == "--quick" ]]; then max_examples="${FUZZ_MAX_EXAMPLES:-50}"; shift; fi
# Anything after `--` goes to `st run` (e.g. `-- --include-path /v1/bills`).
if [[ "${1:-}" == "--" ]]; then shift; fi

base_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
port="${FUZZ_PORT:-18090}"
venv="${FUZZ_VENV:-$HOME/.cache/billing-outbox/venv}"
db="fuzz_api_$$"
db_url="${base_url%/*}/${db}"
work="$(mktemp -d)"
api_pid=""

cleanup() {
    if [[ -n "$api_pid" ]]; then kill "$api_pid" 2>/dev/null || true; wait "$api_pid" 2>/dev/null || true; fi
    psql "$base_url" -qc "DROP DATABASE IF EXISTS ${db} WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# schemathesis lives in its own venv, created once and cached. `python3 -m venv` needs Debian's
# python3-venv (ensurepip); install it when the venv cannot be made.
if [[ ! -x "$venv/bin/st" ]]; then
    echo "fuzz-api: installing schemathesis into $venv" >&2
    if ! python3 -m venv "$venv" 2>/dev/null; then
        rm -rf "$venv"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis>=4,<5'
fi
"$venv/bin/st" --version

cargo build -q -p billing-api
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
psql "$base_url" -qc "CREATE DATABASE ${db}" >/dev/null

token="fuzz-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
keys="k1:$(head -c 32 /dev/urandom | base64 -w0)"
DATABASE_URL="$db_url" API_ADDR="127.0.0.1:${port}" BILLING_ENCRYPTION_KEYS="$keys" \
    ADMIN_TOKEN="$token" API_MIGRATE=true LOG_FORMAT=json RUST_LOG=warn \
    "$target_dir/debug/billing-api" >"$work/api.log" 2>&1 &
api_pid=$!
for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:${port}/readyz" >/dev/null 2>&1 && break
    kill -0 "$api_pid" 2>/dev/null || { cat "$work/api.log" >&2; echo "fuzz-api: billing-api exited" >&2; exit 1; }
    sleep 0.2
done
curl -fsS "http://127.0.0.1:${port}/readyz" >/dev/null

# Checks: every one, except those scripts/fuzz-api.toml turns off, with its reasons
# (positive_data_acceptance everywhere; negative_data_rejection on the two list endpoints).
# --workers 1: with several workers, Python 3.11 fails inside hypothesis ("AST constructor
# recursion depth mismatch") on this schema.
seed_args=()
if [[ -n "${FUZZ_SEED:-}" ]]; then seed_args=(--seed "$FUZZ_SEED"); fi
status=0
"$venv/bin/st" --config-file scripts/fuzz-api.toml run openapi/openapi.json \
    --url "http://127.0.0.1:${port}" \
    -H "Authorization: Bearer ${token}" \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$max_examples" \
    --workers 1 \
    --request-timeout 30 \
    --no-color \
    "${seed_args[@]}" "$@" || status=$?

if ! kill -0 "$api_pid" 2>/dev/null; then
    echo "fuzz-api: billing-api died during the run; its log:" >&2
    tail -50 "$work/api.log" >&2
    status=1
fi
if grep -q '"level":"ERROR"' "$work/api.log"; then
    echo "fuzz-api: billing-api logged errors:" >&2
    grep '"level":"ERROR"' "$work/api.log" | head -20 >&2
fi
exit "$status"
