#!/usr/bin/env bash
#
# kb_tokens.sh: measure maester.estimate_tokens against real tokenizer
# counts on the PostgreSQL manual's chunks and paragraphs.
#
#   test/bench/kb_tokens.sh [psql options...]
#
# Runs against a database where the extension exists (psql options, e.g.
# -h /tmp -p 5432 -U postgres -d postgres; as a superuser: it reads the
# manual with pg_read_file).  Samples: every page of Debian's
# postgresql-doc-15 HTML manual parsed by maester.kb_parse and cut by
# maester.kb_chunk at 128 (overlap 16), 512 (default) and 2048 (no
# overlap) tokens, and every block of the parsed pages (paragraphs, list
# items, code blocks, table blocks).  Counts: js-tiktoken's o200k_base and
# cl100k_base (installed into $TOKENS_DIR, default
# ${TMPDIR:-/tmp}/maester-tokens, as tokens.sh does).  Prints per class:
# the fraction of samples whose estimate is at least the real count under
# each encoding, the median and total estimate/real ratio, and the worst
# sample (real/estimate).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${TOKENS_DIR:-${TMPDIR:-/tmp}/maester-tokens}
html=/usr/share/doc/postgresql-doc-15/html
command -v node >/dev/null || { echo "kb_tokens.sh: node is needed" >&2; exit 64; }
[ -d "$html" ] || { echo "kb_tokens.sh: $html is missing (postgresql-doc-15)" >&2; exit 64; }
mkdir -p "$dir"
if [ ! -f "$dir/node_modules/js-tiktoken/package.json" ]; then
	[ -f "$dir/package.json" ] || echo '{"name": "maester-tokens", "private": true}' > "$dir/package.json"
	npm install --prefix "$dir" --no-audit --no-fund --silent 'js-tiktoken@^1' >&2
fi
psql -X -q -At -v ON_ERROR_STOP=1 "$@" > "$dir/kb_samples.jsonl" <<SQL
WITH doc AS (
  SELECT f AS name, p.body
    FROM pg_ls_dir('$html') f, maester.kb_parse(pg_read_file('$html/' || f), 'text/html') p
   WHERE f LIKE '%.html')
SELECT json_build_object('cls', cls, 'name', name, 'text', text, 'est', maester.estimate_tokens(text))
  FROM (SELECT 'chunk128' AS cls, name || '#' || c.seq AS name, c.content AS text
          FROM doc, maester.kb_chunk(body, '{"max_tokens": 128, "overlap_tokens": 16}') c
        UNION ALL
        SELECT 'chunk512', name || '#' || c.seq, c.content FROM doc, maester.kb_chunk(body) c
        UNION ALL
        SELECT 'chunk2048', name || '#' || c.seq, c.content
          FROM doc, maester.kb_chunk(body, '{"max_tokens": 2048, "overlap_tokens": 0}') c
        UNION ALL
        SELECT 'block', name || '#' || n, trim(b)
          FROM doc, regexp_split_to_table(regexp_replace(body, '\`\`\`.*?\`\`\`', '', 'g'), '\n\n') WITH ORDINALITY t(b, n)
         WHERE b ~ '\S') s;
SQL
exec node "$here/kb_tokens.mjs" "$dir/kb_samples.jsonl" "$dir"
