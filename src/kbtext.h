/*-------------------------------------------------------------------------
 *
 * kbtext.h
 *	  The knowledge engine's text layer: parsing documents into normalized
 *	  Markdown-like text (kbparse.c, kbpdf.c), estimating tokens
 *	  (kbtext.c) and cutting text into chunks (chunk.c).  Callable from C
 *	  without SPI; every result is palloc'd in the current memory context.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_KBTEXT_H
#define MAESTER_KBTEXT_H

#include "utils/jsonb.h"

/* The largest document kb_parse takes, in bytes (larger: 54000) */
#define KB_MAX_CONTENT	(256 * 1024 * 1024)

/* Chunking settings and their ranges (maester.kb_chunking) */
#define KB_MIN_MAX_TOKENS		32
#define KB_MAX_MAX_TOKENS		8192
#define KB_DEFAULT_MAX_TOKENS	512
#define KB_DEFAULT_OVERLAP		64

/*
 * A parsed document.  body is the normalized text (server encoding,
 * NUL-terminated, body_len bytes) that chunks and citations point into;
 * title is NULL when the document has none.
 */
typedef struct KbDocument
{
	char	   *title;
	char	   *body;
	int			body_len;
} KbDocument;

/*
 * One chunk of a body.  start and end are 0-based character offsets into
 * the body (end exclusive), start_byte and end_byte the same in bytes of
 * the body as given (server encoding); content is exactly those bytes,
 * NUL-terminated.  heading_path holds depth heading texts, outermost first.
 * seq counts from 1 in body order.
 */
typedef struct KbChunk
{
	int			seq;
	int			start;
	int			end;
	int			start_byte;
	int			end_byte;
	int			token_estimate;
	int			depth;
	char	  **heading_path;
	char	   *content;
} KbChunk;

/* Validated chunking settings */
typedef struct KbChunking
{
	int			max_tokens;
	int			overlap_tokens;
} KbChunking;

/* kbtext.c: the token estimator and the Markdown line rules */
extern int32 kb_estimate_tokens(const char *s, int len);
extern int32 kb_estimate_tokens_utf8(const char *s, int len);
extern int	kb_estimate_unit(const char *s, int len, int pos, int64 *cost);
extern int64 kb_estimate_raw(const char *s, int len);
extern int32 kb_estimate_final(int64 raw);
extern int64 kb_raw_budget(int32 tokens);
extern int	kb_md_heading(const char *line, int len, int *text_start, int *text_len);
extern int	kb_md_fence_open(const char *line, int len, char *fence_char);
extern bool kb_md_fence_close(const char *line, int len, char fence_char, int fence_len);

/* kbparse.c: documents to normalized text */
extern void kb_parse_document(const char *data, int len, const char *mime,
							  bool binary, KbDocument *doc);

/* kbpdf.c: the text of a PDF, by pdftotext in a child process (UTF-8) */
extern char *kb_pdf_text(const char *data, int len, int *out_len);

/* chunk.c: settings and chunks */
extern KbChunking kb_chunking_from_jsonb(Jsonb *settings);
extern Jsonb *kb_chunking_to_jsonb(KbChunking settings);
extern KbChunk *kb_chunk_text(const char *body, int len, KbChunking settings,
							  bool markdown, int *nchunks);

#endif							/* MAESTER_KBTEXT_H */
