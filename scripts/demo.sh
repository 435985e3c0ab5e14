#!/usr/bin/env bash
# The demo: builds and installs maester, starts a throwaway cluster with
# shared_preload_libraries = 'maester', and walks through demo/demo.sql.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

maester_setup
maester_build_install

work=$(maester_workdir demo)
data="$work/data"
port=${MAESTER_DEMO_PORT:-54329}
trap 'maester_stop_cluster "$data"; maester_stop_mock; rm -rf "$work"' EXIT

# With OPENAI_API_KEY in the environment the demo calls OpenAI for real;
# otherwise it starts the local mock provider and routes gpt-4.1-mini to it.
if [ -n "${OPENAI_API_KEY:-}" ]; then
    echo "maester: OPENAI_API_KEY is set: the demo calls OpenAI"
    MAESTER_MOCK_URL=
else
    maester_start_mock
    echo "maester: no OPENAI_API_KEY: the demo uses the mock provider at $MAESTER_MOCK_URL"
fi
export MAESTER_MOCK_URL
# the mock is also an OpenTelemetry collector: spans are exported to it
otlp=""
[ -n "$MAESTER_MOCK_URL" ] && otlp="maester.otlp_endpoint = '$MAESTER_MOCK_URL'"
maester_start_cluster "$data" "$port" "maester.allow_insecure_hosts = '127.0.0.1'" "$otlp"

maester_as_pg psql -X -q -h "$data" -p "$port" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -f "$work/demo/demo.sql"
