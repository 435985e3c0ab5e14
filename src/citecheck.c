/*-------------------------------------------------------------------------
 *
 * citecheck.c
 *	  The citation checks of evaluate(), computed without a model, over an
 *	  answer whose sentences cite numbered sources as [n] and the sources
 *	  given in context.sources (an array of their texts; maester.ask passes
 *	  them):
 *	   - citations_valid: every [n] names a source (1 .. the number of
 *		 sources); score 1 or 0;
 *	   - citation_coverage (a threshold in [0, 1]): the share of the
 *		 answer's sentences with at least one citation;
 *	   - citation_support (a threshold): over the cited sentences, the share
 *		 of their content words -- lexemes of context.fts_config (default
 *		 english), so stop words do not count -- found among the lexemes of
 *		 the sources they cite.
 *	  The SQL function maester.citation_checks computes the same figures.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "fmgr.h"
#include "tsearch/ts_type.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/regproc.h"

#include "citecheck.h"
#include "jsonutil.h"

/* A sentence of the answer: [start, end) bytes, and the sources it cites */
typedef struct Sentence
{
	int			start;
	int			end;
	List	   *cites;			/* ints */
} Sentence;

/* The [n] of s[0..len), in order (n <= 0 or absurdly long: kept as 0) */
static List *
citations_of(const char *s, int len)
{
	List	   *out = NIL;

	for (int i = 0; i < len; i++)
	{
		int			j = i + 1;
		int64		n = 0;

		if (s[i] != '[')
			continue;
		while (j < len && isdigit((unsigned char) s[j]) && j - i <= 7)
			n = n * 10 + (s[j++] - '0');
		if (j > i + 1 && j < len && s[j] == ']')
			out = lappend_int(out, j - i > 7 ? 0 : (int) n);
	}
	return out;
}

/* Sentences: ends at . ! ? followed by whitespace, or at line breaks */
static List *
sentences_of(const char *s, int len)
{
	List	   *out = NIL;
	int			start = 0;

	for (int i = 0; i <= len; i++)
	{
		bool		end = i == len || s[i] == '\n' ||
			((s[i] == '.' || s[i] == '!' || s[i] == '?') && i + 1 < len && isspace((unsigned char) s[i + 1]));

		if (!end)
			continue;
		{
			int			e = i < len ? i + 1 : len;
			bool		words = false;

			for (int k = start; k < e && !words; k++)
				words = isalnum((unsigned char) s[k]) || (unsigned char) s[k] >= 0x80;
			if (words)
			{
				Sentence   *sent = palloc(sizeof(Sentence));

				sent->start = start;
				sent->end = e;
				sent->cites = citations_of(s + start, e - start);
				out = lappend(out, sent);
			}
			start = e;
		}
	}
	return out;
}

/* The lexemes of a text in a configuration, as a tsvector */
static TSVector
lexemes_of(Oid cfg, const char *s, int len)
{
	return DatumGetTSVector(DirectFunctionCall2(to_tsvector_byid, ObjectIdGetDatum(cfg),
												PointerGetDatum(cstring_to_text_with_len(s, len))));
}

static bool
has_lexeme(TSVector v, const char *lex, int len)
{
	WordEntry  *e = ARRPTR(v);

	for (int i = 0; i < v->size; i++)
		if (e[i].len == len && memcmp(STRPTR(v) + e[i].pos, lex, len) == 0)
			return true;
	return false;
}

/* The sources of context.sources (texts), or raise */
static List *
context_sources(const char *check, JsonbContainer *context)
{
	JsonbValue *v = context ? json_get(context, "sources") : NULL;
	List	   *out = NIL;
	JsonbIterator *it;
	JsonbValue	e;
	JsonbIteratorToken tok;

	if (v == NULL || v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("check \"%s\" needs context.sources, an array of the numbered sources' texts", check),
				 errhint("maester.ask passes them; evaluate(content, checks, context => '{\"sources\": [...]}').")));
	it = JsonbIteratorInit(v->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
		if (tok == WJB_ELEM)
			out = lappend(out, e.type == jbvString ? pnstrdup(e.val.string.val, e.val.string.len) : pstrdup(""));
	return out;
}

/*
 * Run citation check `name` with parameter `param`: false when `name` is
 * not one; else fills score, passed and reason.
 */
bool
citecheck_run(const char *name, JsonbValue *param, JsonbContainer *context,
			  const char *s, int len, bool validate_only,
			  double *score, bool *passed, char **reason)
{
	bool		valid = strcmp(name, "citations_valid") == 0;
	bool		coverage = strcmp(name, "citation_coverage") == 0;
	bool		support = strcmp(name, "citation_support") == 0;
	double		threshold = 1;
	List	   *sources;
	List	   *sents;
	ListCell   *lc;

	if (!valid && !coverage && !support)
		return false;
	if (valid)
	{
		if (param != NULL && param->type != jbvBool)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("check \"citations_valid\" takes true")));
	}
	else
	{
		if (param == NULL || param->type != jbvNumeric)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("check \"%s\" takes a threshold between 0 and 1", name)));
		threshold = DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(param->val.numeric)));
		if (!(threshold >= 0 && threshold <= 1))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("check \"%s\" takes a threshold between 0 and 1, not %g", name, threshold)));
	}
	if (validate_only)
		return true;

	sources = context_sources(name, context);
	sents = sentences_of(s, len);
	*score = 1;
	*passed = true;
	*reason = NULL;
	if (valid)
	{
		foreach(lc, citations_of(s, len))
		{
			int			n = lfirst_int(lc);

			if (n < 1 || n > list_length(sources))
			{
				*score = 0;
				*passed = false;
				*reason = psprintf("Citation [%d] names no source (there are %d)", n, list_length(sources));
				break;
			}
		}
	}
	else if (coverage)
	{
		int			cited = 0;

		foreach(lc, sents)
			cited += ((Sentence *) lfirst(lc))->cites != NIL;
		*score = sents ? (double) cited / list_length(sents) : 0;
		if (*score < threshold)
		{
			*passed = false;
			*reason = psprintf("%d of %d sentences cite a source (%.2f < %g)", cited, list_length(sents),
							   *score, threshold);
		}
	}
	else
	{
		JsonbValue *c = context ? json_get(context, "fts_config") : NULL;
		Oid			cfg;
		double		sum = 0;
		int			counted = 0;

		cfg = DatumGetObjectId(DirectFunctionCall1(regconfigin,
												   CStringGetDatum(c && c->type == jbvString
																   ? pnstrdup(c->val.string.val, c->val.string.len)
																   : "english")));
		foreach(lc, sents)
		{
			Sentence   *sent = lfirst(lc);
			TSVector	words;
			WordEntry  *e;
			int			found = 0;
			ListCell   *nc;
			List	   *cited = NIL;

			if (sent->cites == NIL)
				continue;
			words = lexemes_of(cfg, s + sent->start, sent->end - sent->start);
			if (words->size == 0)
				continue;
			foreach(nc, sent->cites)
			{
				int			n = lfirst_int(nc);

				if (n >= 1 && n <= list_length(sources))
				{
					char	   *src = list_nth(sources, n - 1);

					cited = lappend(cited, lexemes_of(cfg, src, strlen(src)));
				}
			}
			e = ARRPTR(words);
			for (int i = 0; i < words->size; i++)
			{
				ListCell   *vc;

				/* a number in [n] is a lexeme too: it is no content word */
				if (strspn(STRPTR(words) + e[i].pos, "0123456789") >= e[i].len)
					continue;
				foreach(vc, cited)
					if (has_lexeme(lfirst(vc), STRPTR(words) + e[i].pos, e[i].len))
					{
						found++;
						break;
					}
			}
			{
				int			content = 0;

				for (int i = 0; i < words->size; i++)
					content += strspn(STRPTR(words) + e[i].pos, "0123456789") < e[i].len;
				if (content == 0)
					continue;
				sum += (double) found / content;
				counted++;
			}
		}
		*score = counted ? sum / counted : 0;
		if (*score < threshold)
		{
			*passed = false;
			*reason = psprintf("Cited sentences share %.2f of their words with their sources (< %g)", *score, threshold);
		}
	}
	return true;
}
