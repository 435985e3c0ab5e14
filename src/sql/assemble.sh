#!/bin/sh
# Assemble maester's extension scripts from src/sql (see src/sql/README).
#
#   assemble.sh install VERSION        the install script maester--VERSION.sql
#   assemble.sh update FROM VERSION    the update script maester--FROM--VERSION.sql:
#                                      the update fragments from FROM to VERSION,
#                                      in order, then every re-created file
#   assemble.sh from VERSION           the versions that have an update path to
#                                      VERSION (one per line)
#
# The script is written to standard output.  POSIX sh, sed and sort only.
set -eu
dir=$(cd "$(dirname "$0")" && pwd)

# the fragments' "A--B" names
steps() {
    for f in "$dir"/updates/*--*.sql; do
        [ -e "$f" ] || continue
        basename "$f" .sql
    done
}

# the chain of fragments from $1 to $2, one file per line; fails if none
chain() {
    from=$1 to=$2 at=$1
    while [ "$at" != "$to" ]; do
        next=
        for s in $(steps); do
            if [ "${s%%--*}" = "$at" ]; then next=${s#*--}; break; fi
        done
        if [ -z "$next" ]; then
            echo "assemble.sh: no update path from $from to $to (stuck at $at)" >&2
            exit 1
        fi
        echo "$dir/updates/$at--$next.sql"
        at=$next
    done
}

# every re-created file, for an update: CREATE becomes CREATE OR REPLACE
recreated() {
    for f in "$dir"/functions/*.sql; do
        echo
        sed -e 's/^CREATE FUNCTION /CREATE OR REPLACE FUNCTION /' \
            -e 's/^CREATE VIEW /CREATE OR REPLACE VIEW /' \
            -e 's/^CREATE TRIGGER /CREATE OR REPLACE TRIGGER /' "$f"
    done
}

case "${1:-}" in
    install)
        v=$2
        printf '/* maester--%s.sql: assembled from src/sql by src/sql/assemble.sh; do not edit */\n\n' "$v"
        printf '\\echo Use "CREATE EXTENSION maester" to load this file. \\quit\n'
        for f in "$dir"/tables/*.sql "$dir"/functions/*.sql; do
            echo
            cat "$f"
        done
        ;;
    update)
        from=$2 v=$3
        files=$(chain "$from" "$v")
        printf '/* maester--%s--%s.sql: assembled from src/sql by src/sql/assemble.sh; do not edit */\n\n' "$from" "$v"
        printf '\\echo Use "ALTER EXTENSION maester UPDATE TO '"'"'%s'"'"'" to load this file. \\quit\n' "$v"
        for f in $files; do
            echo
            cat "$f"
        done
        recreated
        ;;
    from)
        v=$2
        for s in $(steps); do
            a=${s%%--*}
            if (chain "$a" "$v" >/dev/null 2>&1); then echo "$a"; fi
        done | sort -u
        ;;
    *)
        echo "usage: assemble.sh install VERSION | update FROM VERSION | from VERSION" >&2
        exit 2
        ;;
esac
