#!/usr/bin/env bash
#
# tokens.sh: check maester's input-token numbers against real tokenizer
# counts on real text.
#
#   test/bench/tokens.sh
#
# src/call.c reserves budget for est_input_tokens = UTF-8 bytes of prompt
# and system (whatever the server encoding) + 16, claiming that an honest provider's input tokens never
# exceed it (byte-level BPE emits at least one byte per token; 16 covers the
# chat format).  src/inflight.c estimate_tokens() = (characters + 3) / 4 is
# only a best guess (usage-less providers, rate pacing): we measure its
# error, no bound claimed.
#
# Samples (tokens_samples.py): the PostgreSQL 15 HTML manual (whole pages,
# 1-4 KB prose passages, <pre> listings, synopses and screens), translated
# server messages from /usr/share/locale/*/LC_MESSAGES/postgres-15.mo, and
# adversarial but honest inputs.  Counts (tokens.mjs): js-tiktoken's
# o200k_base and cl100k_base, raw and as a chat request.
#
# Installs what it needs: js-tiktoken into $TOKENS_DIR (default
# ${TMPDIR:-/tmp}/maester-tokens, never the repository) and Debian's
# postgresql-doc-15 if its HTML is missing.  Exit 1 if some sample's real
# chat tokens exceed the bound (a bug to report), 2 if only the bound a
# non-UTF-8 database would compute is exceeded.
#
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dir=${TOKENS_DIR:-${TMPDIR:-/tmp}/maester-tokens}
html=/usr/share/doc/postgresql-doc-15/html
locale=/usr/share/locale
python=/usr/bin/python3

command -v node >/dev/null || { echo "tokens.sh: node is needed" >&2; exit 64; }
mkdir -p "$dir"
if [ ! -f "$dir/node_modules/js-tiktoken/package.json" ]; then
	echo "installing js-tiktoken into $dir" >&2
	[ -f "$dir/package.json" ] || echo '{"name": "maester-tokens", "private": true}' > "$dir/package.json"
	npm install --prefix "$dir" --no-audit --no-fund --silent 'js-tiktoken@^1' >&2
fi
if [ ! -d "$html" ]; then
	echo "installing postgresql-doc-15" >&2
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-doc-15 >&2
fi
ls "$locale"/*/LC_MESSAGES/postgres-15.mo >/dev/null 2>&1 ||
	{ echo "tokens.sh: no $locale/*/LC_MESSAGES/postgres-15.mo (PostgreSQL 15 server with NLS)" >&2; exit 64; }

"$python" "$here/tokens_samples.py" "$html" "$locale" > "$dir/samples.jsonl"
exec node "$here/tokens.mjs" "$dir/samples.jsonl" "$dir"
