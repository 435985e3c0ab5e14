/*-------------------------------------------------------------------------
 *
 * chunk.c
 *	  maester.kb_chunk: a parsed body cut into chunks of at most max_tokens
 *	  estimated tokens (kbtext.c's estimator), along its structure; and
 *	  maester.kb_chunking, the chunking settings checked and completed.
 *
 * Structure.  With markdown, an ATX heading line starts a section that
 * runs to the next heading; lines inside a code fence are never headings.
 * A section's heading path is the stack of the headings enclosing it (a
 * heading pops those of its level and deeper), its own last.  A section's
 * blocks are its heading line, its paragraphs (runs of non-blank lines)
 * and its fenced code blocks (the fence lines included, blank lines
 * inside kept).  Without markdown the body is one section of paragraphs.
 *
 * Cutting.  A block whose estimate exceeds the budget is cut into pieces:
 * at the last sentence end (., ! or ? before whitespace, or a line break)
 * that leaves a piece of at least half the budget, else at the last
 * whitespace, else -- one word larger than the budget -- between
 * characters (only ASCII letter and digit runs are that long, so never
 * inside a multibyte character).  Pieces are packed greedily into chunks;
 * a chunk never spans two sections.  The next chunk of a section starts
 * inside the previous one's tail, whose estimate is at most
 * overlap_tokens: at the earliest sentence start within that much (if it
 * keeps at least half of it), else at the earliest word start; never when
 * the next piece continues a word cut between characters.  Pieces cut
 * from a large block are at most max_tokens - overlap_tokens, so the
 * overlap fits.  A section holding nothing but its heading gives no chunk.
 *
 * Invariants: a chunk starts and ends at non-whitespace, its content is
 * exactly the body's characters [start, end), and its token_estimate (the
 * estimate of its content) is at most max_tokens.  Offsets are characters
 * of the body as given; the work is done on a UTF-8 copy (the same
 * characters) when the server encoding is another.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "kbtext.h"
#include "util.h"

/* A span of the UTF-8 text: a block or a piece of one */
typedef struct Span
{
	int			start;
	int			end;
	int64		cost;			/* kb_estimate_raw of the span */
	bool		glued;			/* continues the previous span's word */
} Span;

/* A position kept in step in the UTF-8 text, characters and the body */
typedef struct Cursor
{
	int			ub;				/* byte of the UTF-8 text */
	int			ch;				/* character */
	int			sb;				/* byte of the body as given */
} Cursor;

typedef struct Chunker
{
	const char *u;				/* UTF-8 text */
	int			ulen;
	const char *body;			/* the body as given */
	bool		converted;		/* u is a converted copy of body */
	bool		bytes;			/* characters are bytes (SQL_ASCII) */
	int64		budget;			/* raw cost of a chunk at most */
	int64		piece_budget;	/* raw cost of a piece cut from a block */
	int64		overlap;		/* raw cost of an overlap at most */
	int			max_tokens;
	Span	   *spans;			/* the current section's blocks, then pieces */
	int			nspans;
	int			maxspans;
	Span	   *pieces;
	int			npieces;
	int			maxpieces;
	KbChunk    *chunks;
	int			nchunks;
	int			maxchunks;
	Cursor		at_start;
	Cursor		at_end;
	/* the heading stack */
	int			depth;
	int			levels[6];
	char	   *texts[6];
} Chunker;

static inline bool
is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Appends a span to an array that grows */
static void
push_span(Span **arr, int *n, int *max, int start, int end, int64 cost, bool glued)
{
	if (*n >= *max)
	{
		*max = *max ? *max * 2 : 64;
		*arr = *arr ? repalloc_huge(*arr, sizeof(Span) * *max) : palloc(sizeof(Span) * *max);
	}
	(*arr)[*n].start = start;
	(*arr)[*n].end = end;
	(*arr)[*n].cost = cost;
	(*arr)[(*n)++].glued = glued;
}

/* Moves a cursor forward to UTF-8 byte target */
static void
cursor_to(Chunker *k, Cursor *c, int target)
{
	Assert(target >= c->ub);
	if (!k->converted)
	{
		if (k->bytes)
			c->ch += target - c->ub;
		else
			for (int i = c->ub; i < target; i++)
				c->ch += ((unsigned char) k->u[i] & 0xc0) != 0x80;
		c->sb = target;
		c->ub = target;
		return;
	}
	while (c->ub < target)
	{
		c->ub += pg_utf_mblen((const unsigned char *) k->u + c->ub);
		c->sb += pg_mblen(k->body + c->sb);
		c->ch++;
	}
}

/* Whether the whitespace at [ws, we) ends a sentence begun after from */
static bool
sentence_end(const char *u, int from, int ws, int we)
{
	int			i = ws - 1;

	if (memchr(u + ws, '\n', we - ws) != NULL)
		return true;
	if (i > from && strchr(")]\"'", u[i]) != NULL)
		i--;
	return i >= from && (u[i] == '.' || u[i] == '!' || u[i] == '?');
}

/* The longest prefix (bytes, at least 1) of the ASCII run at p costing at most room */
static int
fitting_prefix(const char *p, int n, int64 room)
{
	int			lo = 1,
				hi = n;

	while (lo < hi)
	{
		int			mid = lo + (hi - lo + 1) / 2;

		if (kb_estimate_raw(p, mid) <= room)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

/* Cuts the block [bs, be) into pieces of at most piece_budget */
static void
split_block(Chunker *k, int bs, int be)
{
	int			ps = bs;
	bool		glued = false;

	while (ps < be)
	{
		int64		cum = 0,
					cost = 0,
					sent_cost = 0;
		int			pos = ps,
					uend = ps,
					sent_end = -1,
					sent_next = -1,
					word_end = -1,
					word_next = -1;

		CHECK_FOR_INTERRUPTS();
		while (pos < be)
		{
			/* costs as in the piece alone: nothing before ps */
			uend = ps + kb_estimate_unit(k->u + ps, be - ps, pos - ps, &cost);
			if (is_ws(k->u[pos]))
			{
				word_end = pos;
				word_next = uend;
				if (sentence_end(k->u, ps, pos, uend))
				{
					sent_end = pos;
					sent_next = uend;
					sent_cost = cum;
				}
			}
			if (cum + cost > k->piece_budget)
				break;
			cum += cost;
			pos = uend;
		}
		if (pos >= be)
		{
			push_span(&k->pieces, &k->npieces, &k->maxpieces, ps, be,
					  kb_estimate_raw(k->u + ps, be - ps), glued);
			return;
		}
		if (sent_end > ps && (sent_cost * 2 >= k->piece_budget || word_end <= ps))
		{
			push_span(&k->pieces, &k->npieces, &k->maxpieces, ps, sent_end,
					  kb_estimate_raw(k->u + ps, sent_end - ps), glued);
			ps = sent_next;
			glued = false;
		}
		else if (word_end > ps)
		{
			push_span(&k->pieces, &k->npieces, &k->maxpieces, ps, word_end,
					  kb_estimate_raw(k->u + ps, word_end - ps), glued);
			ps = word_next;
			glued = false;
		}
		else
		{
			/* no whitespace since ps: cut between units or inside this one */
			int			cut = pos > ps ? pos :
				pos + fitting_prefix(k->u + pos, uend - pos, k->piece_budget);

			push_span(&k->pieces, &k->npieces, &k->maxpieces, ps, cut,
					  kb_estimate_raw(k->u + ps, cut - ps), glued);
			ps = cut;
			glued = true;
		}
	}
}

/*
 * Where the next chunk starts inside [cs, ce) (raw cost total) so that
 * at most room of it is repeated; -1 for no overlap.
 */
static int
overlap_start(Chunker *k, int cs, int ce, int64 total, int64 room)
{
	int64		cum = 0,
				cost;
	int			pos = cs,
				word = -1,
				sent = -1;
	int64		sent_tail = 0;

	if (room <= 0)
		return -1;
	while (pos < ce)
	{
		int			uend = cs + kb_estimate_unit(k->u + cs, ce - cs, pos - cs, &cost);

		cum += cost;
		if (is_ws(k->u[pos]) && uend < ce && total - cum <= room)
		{
			if (word < 0)
				word = uend;
			if (sent < 0 && sentence_end(k->u, cs, pos, uend))
			{
				sent = uend;
				sent_tail = total - cum;
				break;
			}
		}
		pos = uend;
	}
	if (sent >= 0 && (sent_tail * 2 >= room || word < 0))
		return sent;
	return word;
}

/* Adds the chunk [s, e) of the UTF-8 text with the current heading path */
static void
emit_chunk(Chunker *k, int s, int e, char **path, int depth)
{
	KbChunk    *c;

	if (k->nchunks >= k->maxchunks)
	{
		k->maxchunks = k->maxchunks ? k->maxchunks * 2 : 16;
		k->chunks = k->chunks ? repalloc_huge(k->chunks, sizeof(KbChunk) * k->maxchunks) :
			palloc(sizeof(KbChunk) * k->maxchunks);
	}
	c = &k->chunks[k->nchunks++];
	cursor_to(k, &k->at_start, s);
	cursor_to(k, &k->at_end, e);
	c->seq = k->nchunks;
	c->start = k->at_start.ch;
	c->end = k->at_end.ch;
	c->start_byte = k->at_start.sb;
	c->end_byte = k->at_end.sb;
	c->content = pnstrdup(k->body + c->start_byte, c->end_byte - c->start_byte);
	c->token_estimate = kb_estimate_tokens_utf8(k->u + s, e - s);
	Assert(c->token_estimate <= k->max_tokens);
	c->depth = depth;
	c->heading_path = path;
}

/* The heading path of the current section, in the server encoding */
static char **
heading_path(Chunker *k)
{
	char	  **path = palloc(sizeof(char *) * Max(k->depth, 1));

	for (int i = 0; i < k->depth; i++)
		path[i] = k->converted ?
			pg_any_to_server(k->texts[i], strlen(k->texts[i]), PG_UTF8) : k->texts[i];
	return path;
}

/* The cost of the whitespace [e, s) between two spans, seeing what follows */
static int64
gap_cost(Chunker *k, int e, int s)
{
	int64		cost = 0;

	if (s > e)
		(void) kb_estimate_unit(k->u + e, s - e + 1, 0, &cost);
	return cost;
}

/* Chunks the section whose blocks are k->spans; heading: it starts with one */
static void
chunk_section(Chunker *k, bool heading)
{
	char	  **path;
	int			cs = 0,
				ce = 0;
	int64		ccost = 0;
	bool		open = false;

	if (k->nspans == 0 || (heading && k->nspans == 1))
	{
		k->nspans = 0;
		return;
	}
	path = heading_path(k);
	k->npieces = 0;
	for (int i = 0; i < k->nspans; i++)
	{
		Span	   *b = &k->spans[i];

		b->cost = kb_estimate_raw(k->u + b->start, b->end - b->start);
		if (b->cost <= k->budget)
			push_span(&k->pieces, &k->npieces, &k->maxpieces, b->start, b->end, b->cost, false);
		else
			split_block(k, b->start, b->end);
	}
	k->nspans = 0;

	for (int i = 0; i < k->npieces; i++)
	{
		Span	   *p = &k->pieces[i];
		int64		gap,
					tail;
		int			os;

		CHECK_FOR_INTERRUPTS();
		if (!open)
		{
			cs = p->start, ce = p->end, ccost = p->cost, open = true;
			continue;
		}
		gap = gap_cost(k, ce, p->start);
		if (!p->glued && ccost + gap + p->cost <= k->budget)
		{
			ce = p->end;
			ccost += gap + p->cost;
			continue;
		}
		emit_chunk(k, cs, ce, path, k->depth);
		os = p->glued ? -1 :
			overlap_start(k, cs, ce, ccost, Min(k->overlap, k->budget - gap - p->cost));
		tail = os >= 0 ? kb_estimate_raw(k->u + os, ce - os) : 0;
		/* the tail alone may cost more than inside the chunk */
		if (os >= 0 && tail <= k->overlap && tail + gap + p->cost <= k->budget)
		{
			cs = os;
			ccost = tail + gap + p->cost;
		}
		else
		{
			cs = p->start;
			ccost = p->cost;
		}
		ce = p->end;
	}
	if (open)
		emit_chunk(k, cs, ce, path, k->depth);
}

/* A heading of level with text [ts, ts+tl) onto the stack */
static void
push_heading(Chunker *k, int level, int ts, int tl)
{
	while (k->depth > 0 && k->levels[k->depth - 1] >= level)
		k->depth--;
	k->levels[k->depth] = level;
	k->texts[k->depth++] = pnstrdup(k->u + ts, tl);
}

/*
 * The chunks of body (len bytes, server encoding) under settings; see the
 * file's comment.  *nchunks gets their number.
 */
KbChunk *
kb_chunk_text(const char *body, int len, KbChunking settings, bool markdown,
			  int *nchunks)
{
	Chunker		k;
	int			pos = 0,
				bstart = -1,
				bend = -1,
				fence = 0;
	char		fch = 0;
	bool		heading = false;

	memset(&k, 0, sizeof(k));
	k.body = body;
	k.bytes = GetDatabaseEncoding() == PG_SQL_ASCII;
	k.converted = !k.bytes && GetDatabaseEncoding() != PG_UTF8;
	k.u = k.converted ?
		(const char *) pg_do_encoding_conversion((unsigned char *) body, len,
												 GetDatabaseEncoding(), PG_UTF8) : body;
	k.ulen = k.converted ? strlen(k.u) : len;
	k.max_tokens = settings.max_tokens;
	k.budget = kb_raw_budget(settings.max_tokens);
	k.piece_budget = kb_raw_budget(settings.max_tokens - settings.overlap_tokens);
	k.overlap = kb_raw_budget(settings.overlap_tokens);

	while (pos < k.ulen)
	{
		const char *line = k.u + pos;
		const char *nl = memchr(line, '\n', k.ulen - pos);
		int			n = nl ? nl - line : k.ulen - pos;
		int			first = 0,
					last = n,
					ts,
					tl,
					level,
					f;

		if ((k.nspans & 1023) == 0)
			CHECK_FOR_INTERRUPTS();
		while (first < n && is_ws(line[first]))
			first++;
		while (last > first && is_ws(line[last - 1]))
			last--;

		if (fence > 0)
		{
			if (last > first)
				bend = pos + last;
			if (kb_md_fence_close(line, n, fch, fence))
			{
				push_span(&k.spans, &k.nspans, &k.maxspans, bstart, bend, 0, false);
				bstart = -1;
				fence = 0;
			}
		}
		else if (first == n)
		{
			if (bstart >= 0)
				push_span(&k.spans, &k.nspans, &k.maxspans, bstart, bend, 0, false);
			bstart = -1;
		}
		else if (markdown && (level = kb_md_heading(line, n, &ts, &tl)) > 0)
		{
			if (bstart >= 0)
				push_span(&k.spans, &k.nspans, &k.maxspans, bstart, bend, 0, false);
			bstart = -1;
			chunk_section(&k, heading);
			push_heading(&k, level, pos + ts, tl);
			heading = true;
			push_span(&k.spans, &k.nspans, &k.maxspans, pos + first, pos + last, 0, false);
		}
		else if (markdown && (f = kb_md_fence_open(line, n, &fch)) > 0)
		{
			if (bstart >= 0)
				push_span(&k.spans, &k.nspans, &k.maxspans, bstart, bend, 0, false);
			bstart = pos + first;
			bend = pos + last;
			fence = f;
		}
		else
		{
			if (bstart < 0)
				bstart = pos + first;
			bend = pos + last;
		}
		pos += n + 1;
	}
	if (bstart >= 0)
		push_span(&k.spans, &k.nspans, &k.maxspans, bstart, bend, 0, false);
	chunk_section(&k, heading);
	*nchunks = k.nchunks;
	return k.chunks;
}

/* ---- settings ---- */

/* An integer member of the settings, or an error naming it */
static int
setting_int(JsonbValue *v, const char *key)
{
	Datum		d;

	if (v->type != jbvNumeric)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("chunking setting \"%s\" must be an integer", key)));
	if (!DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(v->val.numeric),
										  DirectFunctionCall1(numeric_floor, NumericGetDatum(v->val.numeric)))) ||
		DatumGetBool(DirectFunctionCall2(numeric_gt, NumericGetDatum(v->val.numeric),
										 DirectFunctionCall1(int4_numeric, Int32GetDatum(PG_INT32_MAX)))) ||
		DatumGetBool(DirectFunctionCall2(numeric_lt, NumericGetDatum(v->val.numeric),
										 DirectFunctionCall1(int4_numeric, Int32GetDatum(PG_INT32_MIN)))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("chunking setting \"%s\" must be an integer", key)));
	d = DirectFunctionCall1(numeric_int4, NumericGetDatum(v->val.numeric));
	return DatumGetInt32(d);
}

/* Checked settings from a jsonb object (NULL: the defaults) */
KbChunking
kb_chunking_from_jsonb(Jsonb *settings)
{
	KbChunking	c = {KB_DEFAULT_MAX_TOKENS, INT_MIN};	/* INT_MIN: not given */
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;

	if (settings != NULL)
	{
		if (!JB_ROOT_IS_OBJECT(settings))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("chunking settings must be a JSON object")));
		it = JsonbIteratorInit(&settings->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
			{
				key = pnstrdup(v.val.string.val, v.val.string.len);
				if (strcmp(key, "max_tokens") != 0 && strcmp(key, "overlap_tokens") != 0)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("unknown chunking setting \"%s\"", maester_cut_short(key, 64)),
							 errhint("The settings are max_tokens and overlap_tokens.")));
			}
			else if (tok == WJB_VALUE)
			{
				if (strcmp(key, "max_tokens") == 0)
					c.max_tokens = setting_int(&v, key);
				else
					c.overlap_tokens = setting_int(&v, key);
			}
		}
	}
	if (c.max_tokens < KB_MIN_MAX_TOKENS || c.max_tokens > KB_MAX_MAX_TOKENS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("chunking setting \"max_tokens\" must be between %d and %d, not %d",
						KB_MIN_MAX_TOKENS, KB_MAX_MAX_TOKENS, c.max_tokens)));
	if (c.overlap_tokens == INT_MIN)
		c.overlap_tokens = Min(KB_DEFAULT_OVERLAP, c.max_tokens / 2);
	else if (c.overlap_tokens < 0 || c.overlap_tokens > c.max_tokens / 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("chunking setting \"overlap_tokens\" must be between 0 and %d (max_tokens / 2), not %d",
						c.max_tokens / 2, c.overlap_tokens)));
	return c;
}

/* The settings as a complete jsonb object */
Jsonb *
kb_chunking_to_jsonb(KbChunking settings)
{
	char	   *s = psprintf("{\"max_tokens\": %d, \"overlap_tokens\": %d}",
							 settings.max_tokens, settings.overlap_tokens);

	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(s)));
}

PG_FUNCTION_INFO_V1(kb_chunking);
Datum
kb_chunking(PG_FUNCTION_ARGS)
{
	Jsonb	   *in = PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0);

	PG_RETURN_JSONB_P(kb_chunking_to_jsonb(kb_chunking_from_jsonb(in)));
}

PG_FUNCTION_INFO_V1(kb_chunk);
Datum
kb_chunk(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	KbChunking	settings;
	bool		markdown = PG_ARGISNULL(2) ? true : PG_GETARG_BOOL(2);
	text	   *body;
	KbChunk    *chunks;
	int			n;

	settings = kb_chunking_from_jsonb(PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1));
	InitMaterializedSRF(fcinfo, 0);
	if (PG_ARGISNULL(0))
		return (Datum) 0;
	body = PG_GETARG_TEXT_PP(0);
	chunks = kb_chunk_text(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), settings, markdown, &n);
	for (int i = 0; i < n; i++)
	{
		KbChunk    *c = &chunks[i];
		Datum		values[6];
		bool		nulls[6] = {false};
		Datum	   *path = palloc(sizeof(Datum) * Max(c->depth, 1));

		for (int j = 0; j < c->depth; j++)
			path[j] = CStringGetTextDatum(c->heading_path[j]);
		values[0] = Int32GetDatum(c->seq);
		values[1] = PointerGetDatum(construct_array(path, c->depth, TEXTOID, -1, false, TYPALIGN_INT));
		values[2] = Int32GetDatum(c->start);
		values[3] = Int32GetDatum(c->end);
		values[4] = Int32GetDatum(c->token_estimate);
		values[5] = PointerGetDatum(cstring_to_text_with_len(c->content, c->end_byte - c->start_byte));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		pfree(path);
	}
	return (Datum) 0;
}
