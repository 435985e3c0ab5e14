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
 * estimate mirrors that: it cuts the UTF-8 text into units, adds up a cost
 * per unit (hundredths of a token), scales the sum and adds a margin:
 *
 *	 ASCII letters: uppercase	 cost_lower, cost_cap, cost_upper or
 *	 letters then lowercase		 cost_mixed by shape and length (a
 *	 ones (camelCase is cut		 word of 1-3 lowercase letters 1 token,
 *	 before each capital)		 "documentation" 2, an 8-letter
 *								 capitalized word 1.45, all capitals
 *								 dearer); a unit with a capital of 4 or
 *								 more letters not after [.!?:] and a
 *								 space counts 1.5 times (names)
 *	 digit run of L digits		 ceil(L / 3) (exact: 1-3 digits a token)
 *	 ASCII symbol, control		 PUNCT_COST each
 *	 whitespace run				 a single space 0 (it joins the next
 *								 word) but DIGIT_SPACE before a digit;
 *								 else NEWLINE_COST per two line breaks,
 *								 plus SPACE_COST per SPACE_STEP spaces
 *								 or tabs after the last one
 *	 other character			 by UTF-8 length: 2 bytes WIDE2_COST,
 *								 3 bytes WIDE3_COST, 4 bytes WIDE4_COST
 *
 *	 estimate = ceil(sum * FACTOR / 10000) + MARGIN		 (0 for no text)
 *
 * The tables are the mean tokens of the manual's words by shape and length
 * under the dearer of the two tokenizers; FACTOR and MARGIN were chosen
 * against js-tiktoken's counts of the manual's chunks and blocks
 * (test/bench/kb_tokens.sh): at 512 tokens, 99.9% of chunks are estimated
 * at or above their real count under both encodings, the median estimate
 * is 1.32 times the real count, and the worst chunk (a list of
 * contributors' names) is 13% above its estimate.  A text in another
 * server encoding is converted to UTF-8 first (what a provider receives).
 * The cost of a unit never falls when the text before it is cut away, so
 * the chunker's sums of pieces bound the estimate of their concatenation.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "kbtext.h"

/*
 * Cost of an ASCII letter run (uppercase letters, then lowercase ones) of
 * n letters by its shape, for n = 1..16 (hundredths), then per letter:
 * the mean tokens of such words of the manual, by length, under the more
 * expensive of the two tokenizers (with or without a leading space).
 */
static const int16 cost_lower[16] = {100, 100, 100, 105, 110, 120, 125, 135, 145, 165, 170, 190, 200, 200, 270, 370};
static const int16 cost_cap[16] = {100, 100, 105, 110, 115, 130, 140, 145, 150, 160, 160, 190, 190, 190, 260, 370};
static const int16 cost_upper[16] = {100, 125, 130, 135, 140, 210, 215, 265, 270, 290, 330, 330, 400, 400, 510, 510};
static const int16 cost_mixed[16] = {130, 130, 130, 225, 245, 250, 280, 280, 345, 345, 380, 380, 420, 420, 420, 450};
#define SLOPE_LOWER		23
#define SLOPE_UPPER		40
#define SLOPE_MIXED		30

#define PUNCT_COST		100		/* an ASCII symbol or control character */
#define NEWLINE_COST	100		/* per two line breaks of a whitespace run */
#define SPACE_STEP		4		/* then SPACE_COST per SPACE_STEP spaces */
#define SPACE_COST		100
#define DIGIT_SPACE		100		/* a lone space before digits (not joined) */
#define WIDE2_COST		100		/* non-ASCII characters by UTF-8 length */
#define WIDE3_COST		200
#define WIDE4_COST		300
#define FACTOR			105		/* estimate = ceil(sum * FACTOR / 10000) */
#define MARGIN			2		/* + MARGIN */

static inline bool
is_upper(unsigned char c)
{
	return c >= 'A' && c <= 'Z';
}

static inline bool
is_lower(unsigned char c)
{
	return c >= 'a' && c <= 'z';
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

/* Whether the letters at pos follow a sentence end: [.!?:] then spaces */
static bool
sentence_start(const unsigned char *u, int pos)
{
	int			i = pos;

	while (i > 0 && is_space(u[i - 1]))
		i--;
	return i < pos && i > 0 && u[i - 1] != '\0' && strchr(".!?:", u[i - 1]) != NULL;
}

/*
 * The unit of UTF-8 text s[0..len) starting at pos: returns where it ends
 * and sets *cost.  A unit's cost looks at most at the whitespace and the
 * character before it and the character after it, inside s: a text cut
 * into pieces at whitespace costs no more than its pieces did (a piece's
 * first word counts as inside a sentence, the dearer case).  Invalid
 * UTF-8 bytes are units of one byte.
 */
int
kb_estimate_unit(const char *s, int len, int pos, int64 *cost)
{
	const unsigned char *u = (const unsigned char *) s;
	unsigned char c = u[pos];
	int			i = pos;

	if (is_upper(c) || is_lower(c))
	{
		int			up = 0,
					low = 0,
					n;
		const int16 *table;
		int			slope;
		int64		w;

		while (i < len && is_upper(u[i]))
			i++, up++;
		while (i < len && is_lower(u[i]))
			i++, low++;
		n = up + low;
		if (up <= 1)
			table = low == 0 || up == 1 ? cost_cap : cost_lower, slope = SLOPE_LOWER;
		else if (low == 0)
			table = cost_upper, slope = SLOPE_UPPER;
		else
			table = cost_mixed, slope = SLOPE_MIXED;
		w = n <= 16 ? table[n - 1] : table[15] + (int64) (n - 16) * slope;
		/* a capital inside a sentence: often a name, dearer */
		if (up > 0 && n >= 4 && !sentence_start(u, pos))
			w = (w * 3 + 1) / 2;
		*cost = w;
	}
	else if (is_digit(c))
	{
		while (i < len && is_digit(u[i]))
			i++;
		*cost = ((i - pos + 2) / 3) * 100;
	}
	else if (is_space(c))
	{
		int64		breaks = 0;
		int			spaces = 0;

		while (i < len && is_space(u[i]))
		{
			if (u[i] == '\n' || u[i] == '\r' || u[i] == '\f' || u[i] == '\v')
			{
				breaks++;
				spaces = 0;
			}
			else
				spaces++;
			i++;
		}
		if (breaks == 0 && spaces == 1)
			*cost = (i < len && is_digit(u[i])) ? DIGIT_SPACE : 0;
		else
			*cost = ((breaks + 1) / 2) * NEWLINE_COST +
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
	t = (raw * FACTOR + 9999) / 10000 + MARGIN;
	return (int32) Min(t, PG_INT32_MAX);
}

/* The largest raw cost whose estimate is at most tokens */
int64
kb_raw_budget(int32 tokens)
{
	if (tokens <= MARGIN)
		return 0;
	return (int64) (tokens - MARGIN) * 10000 / FACTOR;
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
