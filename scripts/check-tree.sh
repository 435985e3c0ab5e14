#!/usr/bin/env bash
# Checks of the source tree that no compiler makes (run by scripts/test.sh
# after the build):
#   1. released install scripts are frozen: each maester--V.sql listed in
#      src/sql/released still has its SHA-256;
#   2. no C file under src/ is longer than 1,200 lines;
#   3. no circle of files calling each other: the graph "file A uses a
#      symbol defined in file B", read from the built objects with nm, has
#      no cycle (each file is a layer above the files it uses).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
status=0

while read -r version commit sha; do
    case "$version" in ''|\#*) continue ;; esac
    f="maester--$version.sql"
    if [ ! -f "$f" ]; then
        echo "check-tree: released install script $f is missing"; status=1; continue
    fi
    actual=$(sha256sum "$f" | cut -d' ' -f1)
    if [ "$actual" != "$sha" ]; then
        echo "check-tree: $f changed since its release ($commit): released install scripts are frozen;"
        echo "            put the change into the next version's scripts (src/sql/README)"
        status=1
    fi
done < src/sql/released

for f in src/*.c; do
    n=$(wc -l < "$f")
    if [ "$n" -gt 1200 ]; then
        echo "check-tree: $f has $n lines (at most 1,200)"; status=1
    fi
done

/usr/bin/python3 - src <<'PY' || status=1
import collections, glob, os, subprocess, sys
objs = sorted(o for o in glob.glob(sys.argv[1] + '/*.o') if os.path.exists(o[:-2] + '.c'))
if not objs:
    sys.exit("check-tree: no objects under src/ (build first)")
defs, uses = {}, collections.defaultdict(set)
for o in objs:
    f = os.path.basename(o)[:-2]
    for line in subprocess.run(['nm', o], capture_output=True, text=True, check=True).stdout.splitlines():
        p = line.split()
        if len(p) == 3 and p[1] in 'TDBRC':
            defs[p[2]] = f
        elif len(p) == 2 and p[0] == 'U':
            uses[f].add(p[1])
graph = {f: sorted({defs[s] for s in syms if s in defs and defs[s] != f}) for f, syms in uses.items()}
# Tarjan's strongly connected components: a component of two or more files is a circle
index, low, stack, on, circles, n = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
    for w in graph.get(v, []):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1:
            circles.append(sorted(comp))
for v in sorted(set(defs.values()) | set(graph)):
    if v not in index:
        visit(v)
for c in circles:
    members = set(c)
    edges = ['%s -> %s' % (a, b) for a in c for b in graph.get(a, []) if b in members]
    print('check-tree: files calling each other in a circle: %s (%s)' % (', '.join(c), '; '.join(edges)))
sys.exit(1 if circles else 0)
PY

[ $status -eq 0 ] && echo "check-tree: released scripts frozen, C files within 1,200 lines, no circles"
exit $status
