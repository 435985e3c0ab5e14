#!/bin/bash
# test/fuzz/run.sh [SECONDS_PER_TARGET] -- fuzz maester's parsers with
# libFuzzer + AddressSanitizer + UBSan, inside a single-user PostgreSQL
# backend (see test/fuzz/README).  Not part of the test suite.
#
#   SECONDS_PER_TARGET  default 60
#   FUZZ_TARGETS        default: template openai anthropic error_summary
#                       retry_after rubric
#   FUZZ_WORK           work dir (build, cluster, corpora, crashes, logs);
#                       default /tmp/fuzz-maester; kept between runs, so
#                       the corpora grow run after run
#
# Exit status: 0 when no target crashed and none reported a finding, 1 when
# one did, 2 when the fuzzer could not be built or run.
set -u
SECS=${1:-60}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${FUZZ_WORK:-/tmp/fuzz-maester}
TARGETS=${FUZZ_TARGETS:-"template openai anthropic error_summary retry_after rubric"}

die() { echo "run.sh: $*" >&2; exit 2; }
case "$SECS" in ''|*[!0-9]*) die "usage: run.sh [SECONDS_PER_TARGET]";; esac

# ---- Debian packages, installed only when missing ----
PKGS="clang-14 libclang-rt-14-dev llvm-14 postgresql-15 postgresql-server-dev-15 libcurl4-openssl-dev"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	[ "$(id -u)" = 0 ] || die "missing packages:$missing (run as root to install them)"
	echo "installing:$missing"
	apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
		die "apt-get install failed"
fi

CLANG=/usr/bin/clang-14
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGBIN=$($PG_CONFIG --bindir)
RT=$($CLANG -print-runtime-dir)
ASAN_RT=$RT/libclang_rt.asan-x86_64.so
FUZZ_LIB=$RT/libclang_rt.fuzzer_no_main-x86_64.a
SYMBOLIZER=/usr/lib/llvm-14/bin/llvm-symbolizer
[ -f "$ASAN_RT" ] && [ -f "$FUZZ_LIB" ] || die "no ASan/libFuzzer runtime in $RT"

# the server runs as postgres when we are root (it refuses to run as root)
if [ "$(id -u)" = 0 ]; then AS="runuser -u postgres --"; else AS=""; fi

mkdir -p "$WORK" || die "cannot create $WORK"
WORK=$(cd "$WORK" && pwd)
rm -rf "$WORK/build" "$WORK/logs" "$WORK/findings"
mkdir -p "$WORK/build" "$WORK/logs" "$WORK/findings" "$WORK/artifacts" "$WORK/corpus"

# ---- build test/fuzz/maester_fuzz.so (into $WORK/build) ----
VERSION=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$ROOT/maester.control")
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
CFLAGS="-g -O1 -fno-omit-frame-pointer -fPIC $SAN -fsanitize=fuzzer-no-link
	-U_FORTIFY_SOURCE -Wno-ignored-attributes -DMAESTER_VERSION=\"$VERSION\"
	-I$HERE/harness -I$ROOT/src -I$($PG_CONFIG --includedir-server) -D_GNU_SOURCE"
# the src/ files the targets reach (http.c comes in through fuzz_http.c)
SRCS="$ROOT/src/template.c $ROOT/src/jsonutil.c $ROOT/src/provider.c
	$ROOT/src/message.c $ROOT/src/provider_openai.c $ROOT/src/provider_anthropic.c $ROOT/src/rubric.c
	$HERE/harness/fuzz_http.c $HERE/harness/targets.c $HERE/harness/fuzz_main.c
	$HERE/harness/stubs.c"
echo "building $WORK/build/maester_fuzz.so"
objs=""
for s in $SRCS; do
	o=$WORK/build/$(basename "$s" .c).o
	$CLANG $CFLAGS -c "$s" -o "$o" 2>>"$WORK/build/build.log" ||
		{ cat "$WORK/build/build.log" >&2; die "compiling $s failed"; }
	objs="$objs $o"
done
$CLANG -shared -fPIC -O1 -o "$WORK/build/preload_fix.so" "$HERE/harness/preload_fix.c" -ldl \
	2>>"$WORK/build/build.log" || { cat "$WORK/build/build.log" >&2; die "preload_fix.c failed"; }
$CLANG -shared $SAN -shared-libasan -Wl,-Bsymbolic -o "$WORK/build/maester_fuzz.so" \
	$objs "$FUZZ_LIB" -lcurl -lstdc++ -lm 2>>"$WORK/build/build.log" ||
	{ cat "$WORK/build/build.log" >&2; die "linking failed"; }

# ---- a scratch cluster for single-user mode ----
if [ ! -f "$WORK/pgdata/PG_VERSION" ]; then
	rm -rf "$WORK/pgdata"
	[ -n "$AS" ] && chown -R postgres "$WORK"
	$AS "$PGBIN/initdb" -D "$WORK/pgdata" -E UTF8 --no-locale -A trust -U postgres \
		>"$WORK/logs/initdb.log" 2>&1 || { cat "$WORK/logs/initdb.log" >&2; die "initdb failed"; }
fi

dict_of() {
	case "$1" in
		template) echo "$HERE/dict/template.dict" ;;
		retry_after) echo "$HERE/dict/header.dict" ;;
		*) echo "$HERE/dict/json.dict" ;;
	esac
}

# ---- run each target (FUZZ_JOBS at a time, each on its own copy of the cluster) ----
JOBS=${FUZZ_JOBS:-1}
run_target() {
	t=$1
	rm -rf "$WORK/seeds/$t" "$WORK/artifacts/$t" "$WORK/pgdata-$t"
	mkdir -p "$WORK/seeds/$t" "$WORK/corpus/$t" "$WORK/artifacts/$t" "$WORK/findings/$t"
	cp "$HERE/corpus/$t"/* "$WORK/seeds/$t/"
	cp "$(dict_of "$t")" "$WORK/build/$t.dict"
	cp -a "$WORK/pgdata" "$WORK/pgdata-$t"
	[ -n "$AS" ] && chown -R postgres "$WORK/seeds/$t" "$WORK/corpus/$t" "$WORK/artifacts/$t" \
		"$WORK/findings/$t" "$WORK/build/$t.dict" "$WORK/pgdata-$t"
	args="'-max_total_time=$SECS','-print_final_stats=1','-timeout=10','-rss_limit_mb=4096'"
	args="$args,'-malloc_limit_mb=2048','-max_len=4096','-detect_leaks=0','-print_pcs=0'"
	args="$args,'-dict=$WORK/build/$t.dict','-artifact_prefix=$WORK/artifacts/$t/'"
	args="$args,'$WORK/corpus/$t','$WORK/seeds/$t'"
	cat >"$WORK/build/$t.sql" <<-EOF
	CREATE OR REPLACE FUNCTION fuzz_run(text, text, text[]) RETURNS int LANGUAGE C STRICT AS '$WORK/build/maester_fuzz.so', 'fuzz_run';
	SELECT fuzz_run('$t', '$WORK/findings/$t', ARRAY[$args]);
	EOF
	echo "fuzzing $t for ${SECS}s (log: $WORK/logs/$t.log)"
	start=$(date +%s)
	$AS env LD_PRELOAD="$ASAN_RT:$WORK/build/preload_fix.so" \
		ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:handle_abort=1:detect_odr_violation=0:print_summary=1:external_symbolizer_path=$SYMBOLIZER" \
		UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:external_symbolizer_path=$SYMBOLIZER" \
		"$PGBIN/postgres" --single -D "$WORK/pgdata-$t" -F -c max_stack_depth=2MB \
		-c log_min_messages=error postgres \
		<"$WORK/build/$t.sql" >"$WORK/logs/$t.out" 2>"$WORK/logs/$t.log"
	echo "$? $(( $(date +%s) - start ))" >"$WORK/logs/$t.rc"
	rm -rf "$WORK/pgdata-$t"
}

running=0
for t in $TARGETS; do
	[ -d "$HERE/corpus/$t" ] || die "no seed corpus $HERE/corpus/$t"
	run_target "$t" &
	running=$((running + 1))
	if [ "$running" -ge "$JOBS" ]; then
		wait -n
		running=$((running - 1))
	fi
done
wait

status=0
report=""
for t in $TARGETS; do
	read -r rc elapsed <"$WORK/logs/$t.rc"
	log=$WORK/logs/$t.log
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
	covline=$(grep -E '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
	cov=$(echo "$covline" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
	ft=$(echo "$covline" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
	corp=$(echo "$covline" | sed -n 's/.*corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p')
	crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
	nfind=$(grep -c '^FUZZ-FINDING ' "$log")
	line=$(printf "%-14s %4ss  execs=%-9s exec/s=%-7s cov=%-5s ft=%-6s corp=%-10s rss=%sMB" \
		"$t" "$elapsed" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}")
	verdict="ok"
	echo
	echo "== $t"
	if [ -n "$crash" ] || ! grep -q '^Done [0-9]* runs' "$log"; then
		verdict="CRASH (exit $rc) input: ${crash:-none saved}"
		status=1
		grep -E '^(==[0-9]+==ERROR|SUMMARY:|.*runtime error:|    #[0-9]+ |.*ERROR: .*)' "$log" |
			head -30 | sed 's/^/    /'
	fi
	if [ "$nfind" -gt 0 ]; then
		[ "$verdict" = ok ] && verdict=""
		verdict="$verdict FINDINGS: $nfind (inputs in $WORK/findings/$t)"
		status=1
		grep -A1 '^FUZZ-FINDING ' "$log" | grep -v '^--$' | cut -c1-400 | sed 's/^/    /' | head -40
	fi
	report="$report$line  $verdict"$'\n'
done

echo
echo "target          time  executions      exec/s       coverage (libFuzzer cov/ft)"
printf "%s" "$report"
exit $status
