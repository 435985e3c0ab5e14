# Shared by scripts/*.sh: package setup, build, and running as a non-root user.
# Source it; it defines functions only.

MAESTER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BINDIR=$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)

# Debian packages the build, the demo and the tests need
MAESTER_PACKAGES=(postgresql-15 postgresql-server-dev-15 libcurl4-openssl-dev libssl-dev
                  libipc-run-perl make gcc python3 rsync curl
                  libxml2-dev poppler-utils postgresql-doc-15 shared-mime-info)

# sudo when not root
maester_sudo() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Install whatever of MAESTER_PACKAGES is missing; silent when nothing is.
maester_setup() {
    local missing=() p
    for p in "${MAESTER_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "maester: installing ${missing[*]}"
    maester_sudo apt-get update -qq
    maester_sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    PG_BINDIR=$(pg_config --bindir)
}

# Build and install the extension into the server's directories.
maester_build_install() {
    make -C "$MAESTER_ROOT" -s
    maester_sudo make -C "$MAESTER_ROOT" -s install >/dev/null
}

# The OS user that runs PostgreSQL: ourselves, or postgres when we are root
# (PostgreSQL refuses to run as root).
maester_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi
}

# Run a command as maester_pg_user, keeping the environment that matters.
maester_as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- env PATH="$PG_BINDIR:$PATH" "$@"
    else
        env PATH="$PG_BINDIR:$PATH" "$@"
    fi
}

# Copy the source tree (with its build products) to a fresh directory the
# PostgreSQL user owns, and print its path.  Tests write results there.
maester_workdir() {
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/maester-$1.XXXXXX")
    rsync -a --exclude .git --exclude tmp_check --exclude tmp_check_regress \
        --exclude results "$MAESTER_ROOT/" "$dir/"
    chmod 755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$dir"; fi
    echo "$dir"
}

# Start a throwaway cluster in $1 (created) on port $2, maester preloaded;
# further arguments are extra postgresql.conf lines.
maester_start_cluster() {
    local data=$1 port=$2 line
    maester_as_pg initdb -D "$data" -A trust -U postgres --no-sync -E UTF8 \
        --locale=C.UTF-8 >/dev/null
    cat >>"$data/postgresql.conf" <<CONF
shared_preload_libraries = 'maester'
port = $port
listen_addresses = ''
unix_socket_directories = '$data'
fsync = off
CONF
    for line in "${@:3}"; do echo "$line" >>"$data/postgresql.conf"; done
    maester_as_pg pg_ctl -D "$data" -l "$data/server.log" -w start >/dev/null
}

maester_stop_cluster() {
    maester_as_pg pg_ctl -D "$1" -m fast -w stop >/dev/null 2>&1 || true
}

# Start Debian's nginx in directory $1, on 127.0.0.1 port $2, answering
# every request with a canned Chat Completions JSON: the benchmarks'
# upstream that costs next to nothing.
maester_start_nginx() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$port;
        location / {
            default_type application/json;
            return 200 '{"id":"chatcmpl-bench","object":"chat.completion","created":1767225600,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"A canned answer from nginx."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}';
        }
    }
}
CONF
    chown -R "$(maester_pg_user)" "$dir"
    maester_as_pg /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" 2>/dev/null
}

maester_stop_nginx() {
    [ -f "$1/nginx.pid" ] && kill "$(cat "$1/nginx.pid")" 2>/dev/null || true
}

# Start the mock provider (test/mock/mock_llm.py) on a free port; sets
# MAESTER_MOCK_PID and MAESTER_MOCK_URL.  Extra arguments go to the mock.
maester_start_mock() {
    local portfile
    portfile=$(mktemp "${TMPDIR:-/tmp}/maester-mock-port.XXXXXX")
    rm -f "$portfile"
    /usr/bin/python3 "$MAESTER_ROOT/test/mock/mock_llm.py" --port 0 \
        --port-file "$portfile" "$@" >/dev/null &
    MAESTER_MOCK_PID=$!
    for _ in $(seq 1 100); do
        [ -s "$portfile" ] && break
        sleep 0.05
    done
    if [ ! -s "$portfile" ]; then
        echo "maester: the mock provider did not start" >&2
        return 1
    fi
    MAESTER_MOCK_URL="http://127.0.0.1:$(cat "$portfile")"
    rm -f "$portfile"
    export MAESTER_MOCK_URL MAESTER_MOCK_PID
}

maester_stop_mock() {
    [ -n "${MAESTER_MOCK_PID:-}" ] && kill "$MAESTER_MOCK_PID" 2>/dev/null || true
    MAESTER_MOCK_PID=
}

# A benchmark's setup: build and install, a work directory for $1, the
# mock provider (unless MAESTER_BENCH_MOCK=0), a cluster on
# MAESTER_BENCH_PORT (default $2) with the extra postgresql.conf lines
# that follow, all torn down at exit; psql_q runs psql on it.  Sets work,
# data and port.
maester_bench_cluster() {
    local name=$1
    maester_setup
    maester_build_install
    work=$(maester_workdir "bench-$name")
    data="$work/data"
    port=${MAESTER_BENCH_PORT:-$2}
    trap 'maester_stop_cluster "$data"; maester_stop_mock; rm -rf "$work"' EXIT
    [ "${MAESTER_BENCH_MOCK:-1}" = 0 ] || maester_start_mock
    maester_start_cluster "$data" "$port" "${@:3}"
}

psql_q() {
    maester_as_pg psql -X -q -At -h "$data" -p "$port" -U postgres -d postgres \
        -v ON_ERROR_STOP=1 "$@"
}

# Build each released version (src/sql/released) from its release commit
# into its own relocated copy of the PostgreSQL installation under $1:
# $1/VERSION/usr/lib/postgresql/15 (bin/, lib/) and .../usr/share/... --
# PostgreSQL finds lib/ and share/ relative to its binaries, so a server
# started from there loads that version's library.  The upgrade test
# (test/t/011_upgrade.pl) fills a database with it, then updates it with
# the current one.  Needs the git history of the releases.
maester_build_releases() {
    local dest=$1 version commit sha tree src
    local bindir pkglibdir sharedir
    bindir=$(pg_config --bindir)
    pkglibdir=$(pg_config --pkglibdir)
    sharedir=$(pg_config --sharedir)
    while read -r version commit sha; do
        case "$version" in ''|\#*) continue ;; esac
        if ! git -C "$MAESTER_ROOT" cat-file -e "$commit^{commit}" 2>/dev/null; then
            echo "maester: the upgrade test needs release $version (commit $commit) in the git history" >&2
            return 1
        fi
        tree="$dest/$version"
        src="$tree/src"
        mkdir -p "$src" "$tree$(dirname "$bindir")" "$tree$(dirname "$sharedir")"
        git -C "$MAESTER_ROOT" archive "$commit" | tar -x -C "$src"
        make -C "$src" -s >/dev/null
        cp -a "$(dirname "$bindir")/." "$tree$(dirname "$bindir")/"
        cp -a "$sharedir/." "$tree$sharedir/"
        rm -rf "$tree$pkglibdir/maester.so" "$tree$pkglibdir/bitcode/maester" \
            "$tree$pkglibdir/bitcode/maester.index.bc" "$tree$sharedir/extension/maester"*
        make -C "$src" -s install DESTDIR="$tree" >/dev/null
        echo "$version $tree$(dirname "$bindir")" >> "$dest/installs"
    done < "$MAESTER_ROOT/src/sql/released"
}
