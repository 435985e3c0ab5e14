/*-------------------------------------------------------------------------
 *
 * template.c
 *	  Prompt templates: the subset of Python's str.format() that prompts use.
 *
 * Syntax: `{name}` is replaced by the value of variable `name`; `{{` and
 * `}}` stand for literal braces.  A name is an ASCII identifier (letter or
 * underscore, then letters, digits, underscores).  Anything else between
 * braces, a lone brace, or `{}` is rejected when the template is compiled,
 * naming the character position, so that a bad template never reaches the
 * registry.
 *
 * A template is compiled once into a list of segments (literal run plus
 * optional variable) and then rendered many times: rendering looks each
 * distinct variable up once in the jsonb object (binary search, no copy for
 * strings), sizes the result exactly and fills it with memcpy.
 *
 * Values: JSON strings are inserted as they are, numbers and booleans as
 * their JSON text, objects and arrays as compact JSON (no blanks, jsonb's
 * key order).  A variable that is absent or JSON null is "missing"; the
 * caller collects the missing names of every template it renders and
 * raises one error naming them all.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "template.h"

/* 1-based character position of byte offset `off` in `src`, for errors */
static int
char_position(const char *src, int off)
{
	return pg_mbstrlen_with_len(src, off) + 1;
}

static bool
is_ident_start(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool
is_ident_char(char c)
{
	return is_ident_start(c) || (c >= '0' && c <= '9');
}

/* The slot where `name` is, or the empty slot where it would go */
static int
var_slot(const CompiledTemplate *t, const char *name, int len)
{
	uint32		mask = t->nslots - 1;
	uint32		h = hash_bytes((const unsigned char *) name, len) & mask;

	for (;;)
	{
		int			v = t->slots[h];

		if (v < 0 || (t->var_lens[v] == len && memcmp(t->vars[v], name, len) == 0))
			return h;
		h = (h + 1) & mask;
	}
}

/* Index the first `t->nvars` variables in a table of `nslots` slots */
static void
index_vars(CompiledTemplate *t, int nslots)
{
	if (t->slots)
		pfree(t->slots);
	t->nslots = nslots;
	t->slots = palloc(sizeof(int) * nslots);
	memset(t->slots, -1, sizeof(int) * nslots);
	for (int v = 0; v < t->nvars; v++)
		t->slots[var_slot(t, t->vars[v], t->var_lens[v])] = v;
}

/*
 * The index of variable `name` (`len` bytes) in `tmpl`, or -1: constant
 * time, so that a template with many variables compiles in linear time.
 */
int
template_var_index(const CompiledTemplate *tmpl, const char *name, int len)
{
	return tmpl->slots[var_slot(tmpl, name, len)];
}

/*
 * Compile `src` (`len` bytes) into a CompiledTemplate allocated in the
 * current memory context.  `what` names the template in errors ("template",
 * "system template").  Raises 22023 on a syntax error.
 */
CompiledTemplate *
template_compile(const char *src, int len, const char *what)
{
	CompiledTemplate *t = palloc0(sizeof(CompiledTemplate));
	StringInfoData lit;
	int			segs_alloc = 8;
	int			vars_alloc = 4;
	int			seg_start = 0;
	int			i = 0;

	initStringInfo(&lit);
	t->segs = palloc(sizeof(TemplateSegment) * segs_alloc);
	t->vars = palloc(sizeof(char *) * vars_alloc);
	t->var_lens = palloc(sizeof(int) * vars_alloc);
	index_vars(t, 8);

	while (i < len)
	{
		char		c = src[i];

		CHECK_FOR_INTERRUPTS();

		if (c == '{' && i + 1 < len && src[i + 1] == '{')
		{
			appendStringInfoChar(&lit, '{');
			i += 2;
		}
		else if (c == '}' && i + 1 < len && src[i + 1] == '}')
		{
			appendStringInfoChar(&lit, '}');
			i += 2;
		}
		else if (c == '}')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid %s: unmatched \"}\" at character %d",
							what, char_position(src, i)),
					 errhint("Write \"}}\" for a literal brace.")));
		else if (c == '{')
		{
			int			j = i + 1;
			int			namelen;
			int			v;

			while (j < len && src[j] != '}' && src[j] != '{')
				j++;
			if (j >= len || src[j] == '{')
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid %s: unmatched \"{\" at character %d",
								what, char_position(src, i)),
						 errhint("Write \"{{\" for a literal brace.")));
			namelen = j - i - 1;
			if (namelen == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid %s: empty variable name \"{}\" at character %d",
								what, char_position(src, i)),
						 errhint("Name the variable, as in \"{event_text}\", or write \"{{}}\" for literal braces.")));
			for (int k = i + 1; k < j; k++)
			{
				if (k == i + 1 ? !is_ident_start(src[k]) : !is_ident_char(src[k]))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("invalid %s: variable name \"%.*s%s\" at character %d is not an identifier",
									what, pg_mbcliplen(src + i + 1, namelen, 64), src + i + 1,
									namelen > pg_mbcliplen(src + i + 1, namelen, 64) ? "..." : "",
									char_position(src, i)),
							 errhint("Variable names are ASCII letters, digits and underscores, not starting with a digit; write \"{{\" and \"}}\" for literal braces.")));
			}

			/* find or add the variable */
			v = template_var_index(t, src + i + 1, namelen);
			if (v < 0)
			{
				if (t->nvars == vars_alloc)
				{
					vars_alloc *= 2;
					t->vars = repalloc(t->vars, sizeof(char *) * vars_alloc);
					t->var_lens = repalloc(t->var_lens, sizeof(int) * vars_alloc);
				}
				v = t->nvars++;
				t->vars[v] = pnstrdup(src + i + 1, namelen);
				t->var_lens[v] = namelen;
				if (t->nvars * 2 > t->nslots)
					index_vars(t, t->nslots * 2);
				else
					t->slots[var_slot(t, t->vars[v], namelen)] = v;
			}

			/* close the segment: literal run so far, then this variable */
			if (t->nsegs == segs_alloc)
			{
				segs_alloc *= 2;
				t->segs = repalloc(t->segs, sizeof(TemplateSegment) * segs_alloc);
			}
			t->segs[t->nsegs].lit_off = seg_start;
			t->segs[t->nsegs].lit_len = lit.len - seg_start;
			t->segs[t->nsegs].var = v;
			t->nsegs++;
			seg_start = lit.len;
			i = j + 1;
		}
		else
		{
			/* copy a run of ordinary bytes in one go */
			int			j = i + 1;

			while (j < len && src[j] != '{' && src[j] != '}')
				j++;
			appendBinaryStringInfo(&lit, src + i, j - i);
			i = j;
		}
	}

	/* trailing literal run */
	if (lit.len > seg_start || t->nsegs == 0)
	{
		if (t->nsegs == segs_alloc)
			t->segs = repalloc(t->segs, sizeof(TemplateSegment) * (segs_alloc + 1));
		t->segs[t->nsegs].lit_off = seg_start;
		t->segs[t->nsegs].lit_len = lit.len - seg_start;
		t->segs[t->nsegs].var = -1;
		t->nsegs++;
	}

	t->literal = lit.data;
	t->literal_len = lit.len;
	return t;
}

/*
 * Raise 22023 unless `variables` is a JSON object (NULL is allowed: it means
 * no variables).
 */
void
template_check_variables(Jsonb *variables)
{
	if (variables != NULL && !JB_ROOT_IS_OBJECT(variables))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("variables must be a JSON object"),
				 errdetail("The value given is a JSON %s.",
						   JB_ROOT_IS_SCALAR(variables) ? "scalar" : "array"),
				 errhint("Pass variables as in '{\"event_text\": \"...\"}'.")));
}

/* Append one jsonb scalar as JSON text */
static void
append_json_scalar(StringInfo out, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			appendStringInfoString(out, "null");
			break;
		case jbvBool:
			appendStringInfoString(out, v->val.boolean ? "true" : "false");
			break;
		case jbvNumeric:
			appendStringInfoString(out,
								   DatumGetCString(DirectFunctionCall1(numeric_out,
																	   NumericGetDatum(v->val.numeric))));
			break;
		case jbvString:
			{
				char	   *s = pnstrdup(v->val.string.val, v->val.string.len);

				escape_json(out, s);
				pfree(s);
			}
			break;
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) v->type);
	}
}

/*
 * Append `container` to `out` as compact JSON: no blanks after ',' or ':',
 * keys in jsonb's order.  (jsonb's own output puts a blank after each.)
 */
void
jsonb_to_compact_text(StringInfo out, JsonbContainer *container)
{
	JsonbIterator *it = JsonbIteratorInit(container);
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		need_comma = false;
	bool		raw_scalar = false;

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		switch (tok)
		{
			case WJB_BEGIN_ARRAY:
				if (v.val.array.rawScalar)
				{
					raw_scalar = true;
					break;
				}
				/* FALLTHROUGH */
			case WJB_BEGIN_OBJECT:
				if (need_comma)
					appendStringInfoChar(out, ',');
				appendStringInfoChar(out, tok == WJB_BEGIN_ARRAY ? '[' : '{');
				need_comma = false;
				break;
			case WJB_END_ARRAY:
				if (!raw_scalar)
					appendStringInfoChar(out, ']');
				need_comma = true;
				break;
			case WJB_END_OBJECT:
				appendStringInfoChar(out, '}');
				need_comma = true;
				break;
			case WJB_KEY:
				if (need_comma)
					appendStringInfoChar(out, ',');
				append_json_scalar(out, &v);
				appendStringInfoChar(out, ':');
				need_comma = false;
				break;
			case WJB_ELEM:
				if (need_comma)
					appendStringInfoChar(out, ',');
				/* FALLTHROUGH */
			case WJB_VALUE:
				append_json_scalar(out, &v);
				need_comma = true;
				break;
			default:
				elog(ERROR, "unexpected jsonb iterator token %d", (int) tok);
		}
	}
}

/* The list of missing names stops at about this many bytes, with "..." */
#define MISSING_LIST_MAX 1024

/*
 * Append `"name"` to the comma-separated list of missing names, once; past
 * MISSING_LIST_MAX bytes the list ends in ", ..." (so that a template of
 * 50,000 variables rendered with none costs linear time, and the error
 * stays readable).
 */
static void
note_missing(StringInfo missing, const char *name)
{
	StringInfoData quoted;
	const char *p;
	int			qlen;

	if (missing->data == NULL)
		initStringInfo(missing);
	if (missing->len >= MISSING_LIST_MAX)
	{
		if (missing->len < 5 || strcmp(missing->data + missing->len - 5, ", ...") != 0)
			appendStringInfoString(missing, ", ...");
		return;
	}
	initStringInfo(&quoted);
	/* names are ASCII identifiers: cutting one at 64 bytes is safe */
	if (strlen(name) > 64)
		appendStringInfo(&quoted, "\"%.64s...\"", name);
	else
		appendStringInfo(&quoted, "\"%s\"", name);
	qlen = quoted.len;
	for (p = missing->data; (p = strstr(p, quoted.data)) != NULL; p += qlen)
	{
		if ((p == missing->data || p[-1] == ' ') &&
			(p[qlen] == '\0' || p[qlen] == ','))
		{
			pfree(quoted.data);
			return;
		}
	}
	if (missing->len > 0)
		appendStringInfoString(missing, ", ");
	appendBinaryStringInfo(missing, quoted.data, quoted.len);
	pfree(quoted.data);
}

/*
 * Render `tmpl` with `variables` (an object container, or NULL for none).
 * Returns the rendered text, palloc'd in the current context; when a
 * variable is absent or JSON null, its quoted name is added to `missing`
 * (initialised on first use when its data is NULL, so that the common case
 * allocates nothing for it) and NULL is returned once all are noted.
 */
text *
template_render(const CompiledTemplate *tmpl, JsonbContainer *variables,
				StringInfo missing)
{
	const char *vals_buf[16];
	int			lens_buf[16];
	const char **vals = vals_buf;
	int		   *lens = lens_buf;
	bool		any_missing = false;
	Size		total = tmpl->literal_len;
	text	   *result;
	char	   *dst;

	if (tmpl->nvars > lengthof(vals_buf))
	{
		vals = palloc(sizeof(char *) * tmpl->nvars);
		lens = palloc(sizeof(int) * tmpl->nvars);
	}

	for (int v = 0; v < tmpl->nvars; v++)
	{
		JsonbValue	buf;
		JsonbValue *jv = NULL;

		if (variables != NULL)
			jv = getKeyJsonValueFromContainer(variables, tmpl->vars[v],
											  tmpl->var_lens[v], &buf);
		if (jv == NULL || jv->type == jbvNull)
		{
			note_missing(missing, tmpl->vars[v]);
			any_missing = true;
			continue;
		}
		switch (jv->type)
		{
			case jbvString:
				vals[v] = jv->val.string.val;
				lens[v] = jv->val.string.len;
				break;
			case jbvNumeric:
				vals[v] = DatumGetCString(DirectFunctionCall1(numeric_out,
															  NumericGetDatum(jv->val.numeric)));
				lens[v] = strlen(vals[v]);
				break;
			case jbvBool:
				vals[v] = jv->val.boolean ? "true" : "false";
				lens[v] = jv->val.boolean ? 4 : 5;
				break;
			case jbvBinary:
				{
					StringInfoData s;

					initStringInfo(&s);
					jsonb_to_compact_text(&s, jv->val.binary.data);
					vals[v] = s.data;
					lens[v] = s.len;
				}
				break;
			default:
				elog(ERROR, "unexpected jsonb value type %d", (int) jv->type);
		}
	}
	if (any_missing)
		return NULL;

	for (int s = 0; s < tmpl->nsegs; s++)
		if (tmpl->segs[s].var >= 0)
			total += lens[tmpl->segs[s].var];

	if (total > MaxAllocSize - VARHDRSZ)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("rendered prompt would be too long (%zu bytes)", total)));

	result = (text *) palloc(VARHDRSZ + total);
	SET_VARSIZE(result, VARHDRSZ + total);
	dst = VARDATA(result);
	for (int s = 0; s < tmpl->nsegs; s++)
	{
		const TemplateSegment *seg = &tmpl->segs[s];

		memcpy(dst, tmpl->literal + seg->lit_off, seg->lit_len);
		dst += seg->lit_len;
		if (seg->var >= 0)
		{
			memcpy(dst, vals[seg->var], lens[seg->var]);
			dst += lens[seg->var];
		}
	}
	return result;
}
