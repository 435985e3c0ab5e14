#!/usr/bin/env bash
# The whole test suite: every pg_regress and TAP suite, each on throwaway
# clusters.  Installs missing Debian packages, builds and installs first.
# Exits non-zero on any failure and prints pg_regress's diffs.
# Arguments are passed to make, e.g. to run one suite:
#   scripts/test.sh REGRESS=render TAP_TESTS=
#   scripts/test.sh REGRESS= PROVE_TESTS=test/t/001_render_cache.pl
set -euo pipefail
. "$(dirname "$0")/lib.sh"

maester_setup
maester_build_install
"$MAESTER_ROOT/scripts/check-tree.sh"

work=$(maester_workdir test)
echo "maester: testing in $work as $(maester_pg_user)"

# the released versions' libraries, for the upgrade test
maester_build_releases "$work/releases"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$work/releases"
export MAESTER_RELEASES="$work/releases/installs"

# the suite never calls a real provider, whatever keys the caller has
unset OPENAI_API_KEY ANTHROPIC_API_KEY AZURE_OPENAI_API_KEY

# the mock provider for the pg_regress suites (TAP tests start their own);
# the key is a test value the servers see in their environment
export MAESTER_TEST_API_KEY="sk-test-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
maester_start_mock --api-key "$MAESTER_TEST_API_KEY"
trap maester_stop_mock EXIT
status=0
maester_as_pg make -C "$work" -s installcheck PROVE_FLAGS="${PROVE_FLAGS:---timer}" "$@" || status=$?
if [ $status -ne 0 ]; then
    if [ -s "$work/regression.diffs" ]; then
        echo "==== regression.diffs ===="
        cat "$work/regression.diffs"
    fi
    for log in "$work"/tmp_check/log/*; do
        [ -f "$log" ] || continue
        echo "==== $log (last 50 lines) ===="
        tail -n 50 "$log"
    done
    echo "maester: tests FAILED (work dir kept: $work)"
    exit $status
fi
rm -rf "$work"
echo "maester: all tests passed"
