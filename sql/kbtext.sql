-- The knowledge engine's text layer: kb_parse, estimate_tokens,
-- kb_chunking and kb_chunk, on the real PostgreSQL 15 manual of Debian's
-- postgresql-doc-15 (1,169 HTML pages), a real PDF of Debian's
-- shared-mime-info, and small hostile inputs.
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
CREATE TEMP TABLE page AS
SELECT f AS name, pg_read_file('/usr/share/doc/postgresql-doc-15/html/' || f) AS html
  FROM pg_ls_dir('/usr/share/doc/postgresql-doc-15/html') f WHERE f LIKE '%.html';
CREATE TEMP TABLE doc AS
SELECT name, html, p.title, p.body FROM page, LATERAL maester.kb_parse(html, 'text/html') p;

-- every page parses; its title is the page's <title> with whitespace
-- collapsed; no navigation header or footer (DocBook's "Prev", "Up",
-- "Home", "Next" links), no table of contents
SELECT count(*) AS pages,
       count(*) FILTER (WHERE title = regexp_replace(trim(translate(substring(html FROM '<title>(.*?)</title>'), U&'\00A0', ' ')), '\s+', ' ', 'g')) AS titles_match,
       count(*) FILTER (WHERE body ~ '\mPrev\M.*\mUp\M.*\mHome\M') AS with_navigation,
       count(*) FILTER (WHERE body ~ '(^|\n)- [0-9.]+ [A-Z]' AND html ~ 'class="toc"') AS with_toc
  FROM doc;
-- no markup left but where the manual shows some (XML examples, and a
-- "&lt;" the manual itself escapes twice)
SELECT name FROM doc WHERE body ~ '<(p|div|a|span|code|b)[ >]' OR body ~ '&(lt|gt|amp|nbsp);' ORDER BY name;
-- blocks are separated by exactly one blank line outside code fences,
-- the body has no whitespace at its ends
SELECT count(*) FILTER (WHERE regexp_replace(body, '```.*?```', 'code', 'g') ~ '\n\n\n') AS triple_newlines,
       count(*) FILTER (WHERE body ~ '^\s|\s$') AS ws_at_ends,
       count(*) FILTER (WHERE body ~ '\r') AS carriage_returns
  FROM doc;
-- the structure of one page: its headings by level, in order
SELECT line FROM doc, regexp_split_to_table(body, '\n') line
 WHERE name = 'indexes-types.html' AND line ~ '^#';
-- its first paragraph, whitespace collapsed, inline markup (a, code,
-- span) as text
SELECT substring(body FROM '\n\n(PostgreSQL provides[^\n]*)') FROM doc WHERE name = 'indexes-types.html';
-- <pre> becomes a fenced block with its whitespace kept
SELECT substring(body FROM '```\n<[^\n]*\n```') FROM doc WHERE name = 'indexes-types.html';
-- list items are "- text" blocks; table rows are lines of cells joined by " | "
SELECT (SELECT count(*) > 150 FROM doc WHERE body ~ '(^|\n\n)- \S') AS pages_with_items,
       substring(body FROM '\nsmallint \| [^\n]*') AS a_row,
       substring(body FROM '\n(Name \| [^\n]*)') AS header_row
  FROM doc WHERE name = 'datatype-numeric.html';

-- the whole manual in chunks (default settings: 512 tokens, overlap 64)
CREATE TEMP TABLE chunk AS
SELECT name, c.* FROM doc, LATERAL maester.kb_chunk(body) c;
-- content is exactly the body's characters [start_offset, end_offset);
-- every estimate is the estimate of the content and at most 512; no
-- chunk starts or ends with whitespace; seq counts from 1 without gaps
SELECT count(*) > 5000 AS many,
       bool_and(content = substr(d.body, start_offset + 1, end_offset - start_offset)) AS exact,
       bool_and(token_estimate = maester.estimate_tokens(content)) AS estimates,
       max(token_estimate) <= 512 AS within,
       bool_and(content !~ '^\s|\s$') AS trimmed
  FROM chunk JOIN doc d USING (name);
SELECT count(*) AS pages_with_gaps FROM (
  SELECT name FROM chunk GROUP BY name HAVING max(seq) <> count(*) OR min(seq) <> 1) g;
-- consecutive chunks of one section overlap (at most 64 tokens of
-- content repeated), chunks of different sections never do, and chunks
-- go forward
CREATE TEMP TABLE pairs AS
SELECT a.name, a.heading_path = b.heading_path AS same_section,
       b.start_offset < a.end_offset AS overlapping, b.start_offset > a.start_offset AS forward,
       CASE WHEN b.start_offset < a.end_offset
            THEN maester.estimate_tokens(substr(d.body, b.start_offset + 1, a.end_offset - b.start_offset)) END AS overlap_tokens
  FROM chunk a JOIN chunk b ON b.name = a.name AND b.seq = a.seq + 1 JOIN doc d ON d.name = a.name;
SELECT same_section, count(*) > 0 AS found, bool_or(overlapping) AS any_overlap,
       bool_and(forward) AS forward, max(overlap_tokens) <= 64 AS overlap_bounded, avg(overlap_tokens) > 20 AS overlap_used
  FROM pairs GROUP BY same_section ORDER BY same_section;
-- heading paths: the stack of enclosing headings
SELECT seq, heading_path, token_estimate <= 512 AS fits, left(content, 40) AS starts
  FROM chunk WHERE name = 'indexes-types.html' AND seq IN (1, 2) ORDER BY seq;
-- code fences are never cut into sections: shell comments in the SSL
-- page's listings ("# root") are no headings
SELECT DISTINCT h FROM chunk, unnest(heading_path) h WHERE name = 'ssl-tcp.html' ORDER BY h;
SELECT count(*) AS comment_lines FROM doc, regexp_matches(body, '\n# (root|intermediate|leaf)\n', 'g') WHERE name = 'ssl-tcp.html';

-- small and large settings, with the largest overlap, on every page:
-- exact offsets, estimates within the limit
SELECT m, bool_and(c.content = substr(body, c.start_offset + 1, c.end_offset - c.start_offset)) AS exact,
       max(c.token_estimate) <= m AS within, count(*) > 0 AS found
  FROM doc, unnest(ARRAY[32, 100, 2048]) m,
       LATERAL maester.kb_chunk(body, jsonb_build_object('max_tokens', m, 'overlap_tokens', m / 2)) c
 GROUP BY m ORDER BY m;
-- a multibyte-heavy text (the manual's letters made Cyrillic and Greek,
-- two bytes each in UTF-8): character offsets, never a split character
CREATE TEMP TABLE mb AS
SELECT name, translate(body, 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ',
                       'абвгдежзийклмнопрстуфхцчшщαβγδεζηθικλμνξοπρστυφχψωΣ') AS body
  FROM doc WHERE name IN ('sql-createtable.html', 'release-15.html', 'indexes-types.html');
SELECT bool_and(octet_length(body) > 1.7 * length(body)) AS multibyte,
       bool_and(c.content = substr(body, c.start_offset + 1, c.end_offset - c.start_offset)) AS exact,
       max(c.token_estimate) <= 64 AS within, bool_and(c.content !~ '^\s|\s$') AS trimmed
  FROM mb, LATERAL maester.kb_chunk(body, '{"max_tokens": 64, "overlap_tokens": 16}') c;
-- markdown false: no sections, heading-like lines are text
SELECT count(DISTINCT heading_path) AS paths, bool_and(heading_path = '{}') AS empty_paths
  FROM doc, LATERAL maester.kb_chunk(body, NULL, false) c WHERE name = 'indexes-types.html';

-- estimate_tokens: far below one token per UTF-8 byte on the manual,
-- never below one token per 12 bytes
SELECT sum(maester.estimate_tokens(body))::float8 / sum(octet_length(body)) BETWEEN 0.2 AND 0.35 AS ratio,
       bool_and(maester.estimate_tokens(body) <= octet_length(body)) AS below_bytes,
       bool_and(maester.estimate_tokens(body) * 12 >= octet_length(body)) AS not_too_low
  FROM doc;
-- exact values (the formula: see kbtext.c)
SELECT s, maester.estimate_tokens(s) FROM unnest(ARRAY['', ' ', 'a', 'the index', 'PostgreSQL',
       'Tom Lane', '123456 7', E'\n\n', 'documentation', 'élève', '漢字', '😀']) s;

-- kb_chunking: defaults, completed, every error naming its key
SELECT maester.kb_chunking(NULL), maester.kb_chunking('{}'),
       maester.kb_chunking('{"max_tokens": 100}'), maester.kb_chunking('{"max_tokens": 32}'),
       maester.kb_chunking('{"max_tokens": 8192, "overlap_tokens": 4096}'),
       maester.kb_chunking('{"overlap_tokens": 0}');
SELECT pg_temp.err(format('SELECT maester.kb_chunking(%L)', j))
  FROM unnest(ARRAY['[]', '"x"', '{"max_token": 5}', '{"max_tokens": "512"}', '{"max_tokens": 512.5}',
                    '{"max_tokens": 31}', '{"max_tokens": 8193}', '{"max_tokens": 1e30}',
                    '{"overlap_tokens": -1}', '{"max_tokens": 100, "overlap_tokens": 51}',
                    '{"overlap_tokens": null}']) j;
-- kb_chunk checks its settings too; NULL body: no rows
SELECT pg_temp.err($$SELECT * FROM maester.kb_chunk('x', '{"size": 1}')$$);
SELECT count(*) FROM maester.kb_chunk(NULL);

-- plain text and Markdown
SELECT title, body FROM maester.kb_parse(E'  # not a heading\r\n\r\n\r\n```not a fence\r\n~~~\rpara\n \t\nend');
SELECT title, body FROM maester.kb_parse(E'```\n# in code\n```\n\n# Title #\n\ntext\r\n## Sub', 'text/markdown');
SELECT seq, heading_path, content FROM maester.kb_chunk(
    (SELECT body FROM maester.kb_parse(E'intro\n\n# A\n\ntext a\n\n## B\n\n```\n# code\n```\n\n# C\n\n## D\n\n### E\n\ntext e', 'text/x-markdown; charset=utf-8')))
 ORDER BY seq;
-- bytes: decoded by the charset parameter, invalid bytes refused
SELECT body FROM maester.kb_parse(decode('636166e9', 'hex'), 'text/plain; charset=ISO-8859-1');
SELECT body FROM maester.kb_parse(decode('efbbbf636166c3a9', 'hex'), 'TEXT/PLAIN');
SELECT title, body FROM maester.kb_parse(convert_to('<html><head><meta charset="iso-8859-1"><title>Caf&eacute; été</title></head><p>caf&eacute; été</p>', 'LATIN1'), 'text/html');
SELECT pg_temp.err($$SELECT maester.kb_parse(decode('61ff62', 'hex'))$$);
SELECT pg_temp.err($$SELECT maester.kb_parse(decode('610062', 'hex'), 'text/markdown')$$);
SELECT pg_temp.err($$SELECT maester.kb_parse('x'::bytea, 'text/plain; charset=klingon')$$);
-- unsupported types, PDF as text, too large
SELECT pg_temp.err($$SELECT maester.kb_parse('x', 'image/png')$$);
SELECT pg_temp.err($$SELECT maester.kb_parse('x', '')$$);
SELECT pg_temp.err($$SELECT maester.kb_parse('x', 'application/pdf')$$);
SELECT pg_temp.err($$SELECT maester.kb_parse(repeat('a', 256 * 1024 * 1024 + 1))$$);

-- hostile HTML: a clean result, never a crash: 100,000 nested elements
-- (libxml2 stops at its depth limit), a 50 MB attribute, NUL bytes,
-- every kind of element unclosed and nested
SELECT length(body) < 10 AS short FROM maester.kb_parse(repeat('<div>', 100000) || 'deep' || repeat('</div>', 100000), 'text/html');
SELECT body FROM maester.kb_parse('<p title="' || repeat('x', 50000000) || '">after</p>', 'text/html');
SELECT title, body FROM maester.kb_parse(decode('3c7469746c653e6100623c2f7469746c653e3c703e7800793c2f703e', 'hex'), 'text/html');
SELECT length(body) >= 0 AS clean FROM maester.kb_parse(repeat('<li><table><tr><td><pre><h1><title><head>', 20000) || 'x', 'text/html');
SELECT body FROM maester.kb_parse('<p># x</p><pre>a ``` b</pre><ul><li><p>one</p><p>two</p></li><li>three<br>four</li></ul><table><tr><th>a</th><th></th><th>c</th></tr><tr><td>1<p>2</p></td></tr></table><nav>n</nav><div role="navigation">r</div><div hidden>h</div><script>s</script><h3>H <br>x</h3>', 'text/html');
-- hostile text for the chunker: one huge word (cut between characters),
-- a long run of spaces, only headings, an unclosed fence
SELECT count(*) > 1 AS cut, max(token_estimate) <= 32 AS within, sum(length(content)) = 100000 AS all_kept
  FROM maester.kb_chunk(repeat('a', 100000), '{"max_tokens": 32, "overlap_tokens": 16}');
SELECT count(*), max(token_estimate) <= 32 AS within, sum(length(content)) = 100000 AS all_kept
  FROM maester.kb_chunk(repeat('é', 100000), '{"max_tokens": 32, "overlap_tokens": 16}') c;
SELECT seq, start_offset, end_offset, length(content), token_estimate FROM maester.kb_chunk(repeat(' ', 100000) || 'x' || repeat(E'\n', 10000) || 'y');
SELECT count(*) FROM maester.kb_chunk(repeat(E'# h\n', 10000));
SELECT count(*), max(token_estimate) <= 100 AS within, bool_and(heading_path = '{}') AS no_sections
  FROM maester.kb_chunk(E'```\n' || repeat(E'# not\n\n', 10000), '{"max_tokens": 100}');

-- PDF (shared-mime-info's specification, a real LaTeX PDF): pdftotext in
-- a child process; pages become blocks; a damaged or a non-PDF file is a
-- clean error; no temporary file is left behind
SELECT title IS NULL AS no_title, body ~ '^Shared MIME-info Database' AS starts,
       body ~ '1\.1\. Version' AS has_section, position(E'\f' IN body) = 0 AS no_form_feeds,
       body !~ '\n\n\n' AS one_blank_line
  FROM maester.kb_parse(pg_read_binary_file('/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf'), 'application/pdf');
SELECT count(*) > 10 AS chunks, max(token_estimate) <= 512 AS within
  FROM maester.kb_parse(pg_read_binary_file('/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf'), 'application/pdf') p,
       maester.kb_chunk(p.body) c;
SELECT regexp_replace(pg_temp.err($$SELECT maester.kb_parse(substr(pg_read_binary_file('/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf'), 1, 5000), 'application/pdf')$$), '\(.*', '');
SELECT regexp_replace(pg_temp.err($$SELECT maester.kb_parse('not a pdf'::bytea, 'application/pdf')$$), '\(.*', '');
SELECT count(*) AS temp_left FROM pg_ls_dir('base/pgsql_tmp', true, false) f WHERE f LIKE 'pgsql_tmpmaester_pdf%';
