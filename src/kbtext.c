/*-------------------------------------------------------------------------
 *
 * kbtext.c
 *	  maester.estimate_tokens: a conservative estimate of the tokens
 *	  OpenAI's tokenizers (cl100k_base, o200k_base) make of a text, and the
 *	  Markdown line rules (ATX headings, code fences) the parser and the
 *	  chunker share.  This file calls no other file of maester.
 *
 * The estimator.  Both tokenizers first cut text into pre-tokens with a
 * regular expression (a letter run with at most one leading non-letter,
 * 1-3 digits, a punctuation run, whitespace), then byte-pair-encode each
 * pre-token alone: a text's tokens are the sum over its pre-tokens.  The
 * estimate mirrors that: it cuts the UTF-8 text into units and adds up a
 * cost per unit (in hundredths of a token), then rounds up and adds a
 * margin:
 *
 *	 ASCII letter run of L letters	 LETTER_COST[L] (1 token up to a
 *									 length, then per LETTER_STEP letters)
 *	 digit run of L digits			 ceil(L / 3) (exact: 1-3 digits a token)
 *	 punctuation, symbol, control	 PUNCT_COST each
 *	 whitespace run					 a single space 0 (it joins the next
 *									 word); else NEWLINE_COST for a run
 *									 holding line breaks, plus SPACE_COST
 *									 per SPACE_STEP further spaces or tabs
 *	 other character				 by UTF-8 length: 2 bytes WIDE2_COST,
 *									 3 bytes WIDE3_COST, 4 bytes WIDE4_COST
 *
 *	 estimate = ceil(sum / 100) + MARGIN
 *
 * Every unit's cost depends on the unit alone, and a run's cost never
 * exceeds the costs of its parts, so the estimate of a text cut at unit
 * boundaries is at most the sum of the estimates of its pieces (the
 * chunker relies on this).  The constants were measured against
 * js-tiktoken's counts on the PostgreSQL manual (test/bench/tokens.sh):
 * see the figures there.  A text in another server encoding is converted
 * to UTF-8 first (what a provider receives).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "kbtext.h"

/* The estimator's constants, in hundredths of a token (see above) */
#define LETTER_FREE		6		/* letter runs up to this long: LETTER_COST */
#define LETTER_BASE		100
#define LETTER_STEP		4		/* then LETTER_STEP_COST per LETTER_STEP more */
#define LETTER_STEP_COST 100
#define PUNCT_COST		100
#define NEWLINE_COST	100
#define SPACE_STEP		4
#define SPACE_COST		100
#define WIDE2_COST		100
#define WIDE3_COST		200
#define WIDE4_COST		300
#define MARGIN			2

/* Cost of an ASCII letter run of n letters */
static inline int64
letter_cost(int64 n)
{
	if (n <= LETTER_FREE)
		return LETTER_BASE;
	return LETTER_BASE + ((n - LETTER_FREE + LETTER_STEP - 1) / LETTER_STEP) * LETTER_STEP_COST;
}

static inline bool
is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static inline bool
is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static inline bool
is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/*
 * The unit of UTF-8 text s[pos..len) starting at pos: returns where it
 * ends and sets *cost.  Invalid bytes are units of one byte.
 */
int
kb_estimate_unit(const char *s, int len, int pos, int64 *cost)
{
	const unsigned char *u = (const unsigned char *) s;
	unsigned char c = u[pos];
	int			i = pos;

	if (is_alpha(c))
	{
		while (i < len && is_alpha(u[i]))
			i++;
		*cost = letter_cost(i - pos);
	}
	else if (is_digit(c))
	{
		while (i < len && is_digit(u[i]))
			i++;
		*cost = ((i - pos + 2) / 3) * 100;
	}
	else if (is_space(c))
	{
		bool		nl = false;
		int			spaces = 0;

		while (i < len && is_space(u[i]))
		{
			if (u[i] == '\n' || u[i] == '\r' || u[i] == '\f' || u[i] == '\v')
			{
				nl = true;
				spaces = 0;
			}
			else
				spaces++;
			i++;
		}
		if (!nl && spaces == 1)
			*cost = 0;
		else
			*cost = (nl ? NEWLINE_COST : 0) +
				((spaces + SPACE_STEP - 1) / SPACE_STEP) * SPACE_COST;
	}
	else if (c < 0x80)
	{
		i++;
		*cost = PUNCT_COST;
	}
	else
	{
		int			n = (c >= 0xf0) ? 4 : (c >= 0xe0) ? 3 : (c >= 0xc0) ? 2 : 1;
		int			k;

		for (k = 1; k < n; k++)
			if (pos + k >= len || (u[pos + k] & 0xc0) != 0x80)
				break;
		if (k < n)
			n = 1;				/* invalid: one byte */
		i += n;
		*cost = n == 4 ? WIDE4_COST : n == 3 ? WIDE3_COST : n == 2 ? WIDE2_COST : PUNCT_COST;
	}
	return i;
}

/* The sum of the unit costs of UTF-8 text (hundredths of a token) */
int64
kb_estimate_raw(const char *s, int len)
{
	int64		sum = 0;
	int			pos = 0;

	while (pos < len)
	{
		int64		cost;

		pos = kb_estimate_unit(s, len, pos, &cost);
		sum += cost;
	}
	return sum;
}

/* The estimate of a text whose units cost raw in all; 0 for nothing */
int32
kb_estimate_final(int64 raw)
{
	int64		t;

	if (raw <= 0)
		return 0;
	t = (raw + 99) / 100 + MARGIN;
	return (int32) Min(t, PG_INT32_MAX);
}

/* The largest raw cost whose estimate is at most tokens */
int64
kb_raw_budget(int32 tokens)
{
	if (tokens <= MARGIN)
		return 0;
	return (int64) (tokens - MARGIN) * 100;
}

/* The estimate of UTF-8 text */
int32
kb_estimate_tokens_utf8(const char *s, int len)
{
	if (len <= 0)
		return 0;
	return kb_estimate_final(kb_estimate_raw(s, len));
}

/* The estimate of text in the server encoding (converted to UTF-8 first) */
int32
kb_estimate_tokens(const char *s, int len)
{
	char	   *u;
	int32		n;

	if (len <= 0)
		return 0;
	if (GetDatabaseEncoding() == PG_UTF8 || GetDatabaseEncoding() == PG_SQL_ASCII)
		return kb_estimate_tokens_utf8(s, len);
	u = (char *) pg_do_encoding_conversion((unsigned char *) s, len,
										   GetDatabaseEncoding(), PG_UTF8);
	n = kb_estimate_tokens_utf8(u, u == s ? len : (int) strlen(u));
	if (u != s)
		pfree(u);
	return n;
}

PG_FUNCTION_INFO_V1(estimate_tokens_text);
Datum
estimate_tokens_text(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);

	PG_RETURN_INT32(kb_estimate_tokens(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)));
}

/*
 * An ATX heading line (CommonMark): up to 3 spaces, 1-6 '#', then a space,
 * a tab or the end of the line.  Returns its level (0: not a heading) and
 * the span of its text, trimmed, without a closing sequence of '#'.
 */
int
kb_md_heading(const char *line, int len, int *text_start, int *text_len)
{
	int			i = 0,
				level = 0,
				e;

	while (i < len && i < 3 && line[i] == ' ')
		i++;
	while (i < len && line[i] == '#' && level < 7)
		i++, level++;
	if (level == 0 || level > 6 || (i < len && line[i] != ' ' && line[i] != '\t'))
		return 0;
	while (i < len && (line[i] == ' ' || line[i] == '\t'))
		i++;
	e = len;
	while (e > i && is_space((unsigned char) line[e - 1]))
		e--;
	/* a closing sequence: '#'s preceded by a space (or the whole text) */
	{
		int			h = e;

		while (h > i && line[h - 1] == '#')
			h--;
		if (h < e && (h == i || line[h - 1] == ' ' || line[h - 1] == '\t'))
		{
			e = h;
			while (e > i && (line[e - 1] == ' ' || line[e - 1] == '\t'))
				e--;
		}
	}
	*text_start = i;
	*text_len = e - i;
	return level;
}

/*
 * A code fence's opening line: up to 3 spaces, then 3 or more '`' (whose
 * info string holds no '`') or '~'.  Returns the fence's length (0: not a
 * fence) and its character.
 */
int
kb_md_fence_open(const char *line, int len, char *fence_char)
{
	int			i = 0,
				n = 0;
	char		c;

	while (i < len && i < 3 && line[i] == ' ')
		i++;
	if (i >= len || (line[i] != '`' && line[i] != '~'))
		return 0;
	c = line[i];
	while (i < len && line[i] == c)
		i++, n++;
	if (n < 3)
		return 0;
	if (c == '`' && memchr(line + i, '`', len - i) != NULL)
		return 0;
	*fence_char = c;
	return n;
}

/* Whether line closes a fence of fence_len fence_chars */
bool
kb_md_fence_close(const char *line, int len, char fence_char, int fence_len)
{
	int			i = 0,
				n = 0;

	while (i < len && i < 3 && line[i] == ' ')
		i++;
	while (i < len && line[i] == fence_char)
		i++, n++;
	if (n < fence_len)
		return false;
	while (i < len && is_space((unsigned char) line[i]))
		i++;
	return i == len;
}
