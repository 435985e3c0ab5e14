-- src/sql/functions/96_kbtext.sql: The knowledge engine's text layer: kb_parse, estimate_tokens, kb_chunking, kb_chunk.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE FUNCTION maester.kb_parse(
    content   text,
    mime      text DEFAULT 'text/plain',
    OUT title text,
    OUT body  text)
AS 'MODULE_PATHNAME', 'kb_parse_text'
LANGUAGE C VOLATILE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION maester.kb_parse(text, text) IS
    'Parses a document into its title and its body, the normalized Markdown-like text chunks and citations point into: headings "# text" by level, blocks separated by one blank line, list items "- text", table rows with cells joined by " | ", preformatted text fenced by ```. mime: text/plain (title NULL; lines that would read as headings or fences escaped with a backslash), text/markdown or text/x-markdown (kept as is but for newlines; title: the first "# " heading), text/html or application/xhtml+xml (libxml2; navigation, scripts, styles and the head dropped; title: <title>); parameters such as charset are accepted. A PDF must be passed as bytea. At most 256 MB.';

CREATE FUNCTION maester.kb_parse(
    content   bytea,
    mime      text DEFAULT 'text/plain',
    OUT title text,
    OUT body  text)
AS 'MODULE_PATHNAME', 'kb_parse_bytea'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_parse(bytea, text) IS
    'Parses a document given as bytes: text types decoded by the charset parameter of mime (default UTF-8) into the server encoding, HTML by its own declaration unless mime names a charset, application/pdf by pdftotext (poppler-utils) in a child process with limits of 60 seconds and 1 GB (title NULL; a page is a block). Otherwise as maester.kb_parse(text, text).';

CREATE FUNCTION maester.estimate_tokens(input text)
RETURNS integer
AS 'MODULE_PATHNAME', 'estimate_tokens_text'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION maester.estimate_tokens(text) IS
    'A conservative estimate of the tokens OpenAI''s cl100k_base and o200k_base tokenizers make of the text (letter runs, digit groups, symbols, whitespace and other characters counted apart, plus a margin), measured on the PostgreSQL manual (test/bench/tokens.sh); far tighter than one token per UTF-8 byte.';

CREATE FUNCTION maester.kb_chunking(chunking jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'kb_chunking'
LANGUAGE C IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE;

COMMENT ON FUNCTION maester.kb_chunking(jsonb) IS
    'Checks chunking settings and returns them complete: max_tokens (integer 32 to 8192, default 512), overlap_tokens (integer 0 to max_tokens / 2, default 64, at most max_tokens / 2 when max_tokens alone is given). NULL gives the defaults; an unknown key, a value that is not an integer, or one out of range is an error (22023).';

CREATE FUNCTION maester.kb_chunk(
    body     text,
    chunking jsonb DEFAULT NULL,
    markdown boolean DEFAULT true)
RETURNS TABLE (seq integer, heading_path text[], start_offset integer,
               end_offset integer, token_estimate integer, content text)
AS 'MODULE_PATHNAME', 'kb_chunk'
LANGUAGE C IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE ROWS 20;

COMMENT ON FUNCTION maester.kb_chunk(text, jsonb, boolean) IS
    'Cuts a parsed body into chunks of at most max_tokens estimated tokens (maester.estimate_tokens; settings as maester.kb_chunking). With markdown (NULL: true), ATX headings start sections, never inside code fences; a chunk stays inside one section and carries the section''s heading_path; blocks are packed greedily, a larger block is cut at sentence ends, then whitespace, then characters; consecutive chunks of a section overlap by at most overlap_tokens. start_offset and end_offset are 0-based character offsets into body (end exclusive) and content is substr(body, start_offset + 1, end_offset - start_offset). A NULL body gives no rows.';

GRANT EXECUTE ON FUNCTION
    maester.kb_parse(text, text), maester.kb_parse(bytea, text),
    maester.estimate_tokens(text),
    maester.kb_chunking(jsonb),
    maester.kb_chunk(text, jsonb, boolean) TO maester_user, maester_admin;
