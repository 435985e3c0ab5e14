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
trap 'maester_stop_cluster "$data"; rm -rf "$work"' EXIT
maester_start_cluster "$data" "$port"

maester_as_pg psql -X -q -h "$data" -p "$port" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -f "$work/demo/demo.sql"
