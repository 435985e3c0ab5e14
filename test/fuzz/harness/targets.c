/*-------------------------------------------------------------------------
 *
 * targets.c
 *	  The fuzz targets, each with oracles beyond "does not crash".
 *
 *	template       template_compile / template_render / template_var_index /
 *	               template_check_variables / jsonb_to_compact_text, checked
 *	               against a reference implementation written here
 *	openai         a provider body through provider_outcome (HTTP 200):
 *	anthropic      pg_verify_mbstr, json_parse_object, the kind's
 *	               parse_response; no ERROR may escape (provider.c: "parsing
 *	               never throws on it")
 *	error_summary  a provider body through provider_outcome (HTTP 429):
 *	               classify_status, provider_error_summary with its key
 *	               masking; the key must never come out
 *	retry_after    response header lines through http.c's header callback
 *	rubric         a grader's answer through rubric_verdict
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "http.h"
#include "jsonutil.h"
#include "maester.h"
#include "provider.h"
#include "router.h"
#include "rubric.h"
#include "template.h"

#include "fuzz.h"

extern int	fuzz_http_header(HttpRequest *req, char *data, size_t n);

/* The separator of a template input's parts: template, variables, system */
#define SEP "\n%%\n"
#define SEPLEN 4

/* The API key the provider targets pretend to use */
#define FUZZ_KEY "sk-fuzz-0123456789abcdef"

/* ---------- helpers ---------- */

/* valid in the server encoding (UTF8 here), no NUL: what a text can hold */
static bool
valid_text(const char *s, size_t len)
{
	return pg_verifymbstr(s, (int) len, true);
}

/* An exactly sized palloc'd copy (ASan's redzone right after it) */
static char *
exact_copy(const char *s, size_t len, bool nul)
{
	char	   *p = palloc(len + (nul ? 1 : 0));

	memcpy(p, s, len);
	if (nul)
		p[len] = '\0';
	return p;
}

static const char *
show(const char *s, int len)
{
	StringInfoData b;

	initStringInfo(&b);
	for (int i = 0; i < len && i < 300; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c < 0x20 || c == '\\' || c >= 0x7f)
			appendStringInfo(&b, "\\x%02x", c);
		else
			appendStringInfoChar(&b, c);
	}
	if (len > 300)
		appendStringInfoString(&b, "...");
	return b.data;
}

/* jsonb_in of a NUL-terminated string; NULL (error flushed) if invalid */
static Jsonb *
try_jsonb(const char *s)
{
	MemoryContext cxt = CurrentMemoryContext;
	Jsonb	   *volatile jb = NULL;

	PG_TRY();
	{
		jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(s)));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		jb = NULL;
	}
	PG_END_TRY();
	return jb;
}

/*
 * Reference compact JSON: jsonb's own output (one blank after ',' and ':')
 * with the blanks outside strings taken out.
 */
static char *
ref_compact(JsonbContainer *c)
{
	char	   *s = JsonbToCString(NULL, c, -1);
	char	   *o = palloc(strlen(s) + 1);
	char	   *d = o;
	bool		in_str = false;
	bool		esc = false;

	for (char *p = s; *p; p++)
	{
		if (in_str)
		{
			if (esc)
				esc = false;
			else if (*p == '\\')
				esc = true;
			else if (*p == '"')
				in_str = false;
		}
		else if (*p == '"')
			in_str = true;
		else if (*p == ' ')
			continue;
		*d++ = *p;
	}
	*d = '\0';
	return o;
}

static void
check_compact(JsonbContainer *c, const char *where)
{
	StringInfoData s;
	char	   *ref = ref_compact(c);

	initStringInfo(&s);
	jsonb_to_compact_text(&s, c);
	if (strcmp(s.data, ref) != 0)
		fuzz_finding("compact-text-mismatch",
					 "%s: jsonb_to_compact_text gave \"%s\", expected \"%s\"",
					 where, show(s.data, s.len), show(ref, strlen(ref)));
}

/* ---------- the reference template language ---------- */

typedef struct RefItem
{
	bool		is_var;
	int			off;			/* literal: into lit; var: into src */
	int			len;
} RefItem;

typedef struct RefTemplate
{
	bool		ok;
	int			errkind;		/* 1 lone {, 2 lone }, 3 {}, 4 not identifier */
	int			erroff;			/* byte offset of the brace */
	int			namelen;		/* kind 4 */
	StringInfoData lit;
	int			nitems;
	RefItem    *items;
	int			nvars;
	int		   *var_off;		/* distinct names, first use first */
	int		   *var_len;
} RefTemplate;

static bool
ref_ident(const char *s, int len)
{
	if (len == 0 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') ||
					  s[0] == '_'))
		return false;
	for (int i = 1; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
			  (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	return true;
}

static void
ref_add(RefTemplate *r, bool is_var, int off, int len)
{
	r->items[r->nitems].is_var = is_var;
	r->items[r->nitems].off = off;
	r->items[r->nitems].len = len;
	r->nitems++;
}

static void
ref_parse(const char *src, int len, RefTemplate *r)
{
	int			i = 0;
	int			lit_start = 0;

	memset(r, 0, sizeof(*r));
	initStringInfo(&r->lit);
	r->items = palloc(sizeof(RefItem) * (len + 1));
	r->var_off = palloc(sizeof(int) * (len + 1));
	r->var_len = palloc(sizeof(int) * (len + 1));
	r->ok = true;
	while (i < len)
	{
		const char *open,
				   *close;
		int			namelen;

		if (src[i] == '{' && i + 1 < len && src[i + 1] == '{')
		{
			appendStringInfoChar(&r->lit, '{');
			i += 2;
			continue;
		}
		if (src[i] == '}')
		{
			if (i + 1 < len && src[i + 1] == '}')
			{
				appendStringInfoChar(&r->lit, '}');
				i += 2;
				continue;
			}
			r->ok = false;
			r->errkind = 2;
			r->erroff = i;
			return;
		}
		if (src[i] != '{')
		{
			appendStringInfoChar(&r->lit, src[i]);
			i++;
			continue;
		}
		/* a field: up to the next brace, which must close it */
		open = memchr(src + i + 1, '{', len - i - 1);
		close = memchr(src + i + 1, '}', len - i - 1);
		if (close == NULL || (open != NULL && open < close))
		{
			r->ok = false;
			r->errkind = 1;
			r->erroff = i;
			return;
		}
		namelen = close - (src + i + 1);
		if (namelen == 0 || !ref_ident(src + i + 1, namelen))
		{
			r->ok = false;
			r->errkind = namelen == 0 ? 3 : 4;
			r->erroff = i;
			r->namelen = namelen;
			return;
		}
		if (r->lit.len > lit_start || r->nitems == 0 || r->items[r->nitems - 1].is_var)
			ref_add(r, false, lit_start, r->lit.len - lit_start);
		lit_start = r->lit.len;
		ref_add(r, true, i + 1, namelen);
		{
			int			v;

			for (v = 0; v < r->nvars; v++)
				if (r->var_len[v] == namelen &&
					memcmp(src + r->var_off[v], src + i + 1, namelen) == 0)
					break;
			if (v == r->nvars)
			{
				r->var_off[v] = i + 1;
				r->var_len[v] = namelen;
				r->nvars++;
			}
		}
		i += namelen + 2;
	}
	if (r->lit.len > lit_start)
		ref_add(r, false, lit_start, r->lit.len - lit_start);
}

/* 1-based character position of byte `off` (UTF-8: count lead bytes) */
static int
ref_charpos(const char *src, int off)
{
	int			n = 0;

	for (int i = 0; i < off; i++)
		if (((unsigned char) src[i] & 0xC0) != 0x80)
			n++;
	return n + 1;
}

/* The byte length of the longest run of whole UTF-8 characters <= limit */
static int
ref_cliplen(const char *s, int len, int limit)
{
	int			clen = 0;

	while (clen < len)
	{
		unsigned char c = (unsigned char) s[clen];
		int			l = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;

		if (clen + l > limit)
			break;
		clen += l;
	}
	return clen;
}

static char *
ref_error(const char *src, const RefTemplate *r, const char *what)
{
	int			pos = ref_charpos(src, r->erroff);

	switch (r->errkind)
	{
		case 1:
			return psprintf("invalid %s: unmatched \"{\" at character %d", what, pos);
		case 2:
			return psprintf("invalid %s: unmatched \"}\" at character %d", what, pos);
		case 3:
			return psprintf("invalid %s: empty variable name \"{}\" at character %d", what, pos);
		default:
			{
				int			clip = ref_cliplen(src + r->erroff + 1, r->namelen, 64);

				return psprintf("invalid %s: variable name \"%.*s%s\" at character %d is not an identifier",
								what, clip, src + r->erroff + 1,
								r->namelen > clip ? "..." : "", pos);
			}
	}
}

/* template_compile, with its ERROR caught into *err */
static CompiledTemplate *
try_compile(const char *src, int len, const char *what, ErrorData **err)
{
	MemoryContext cxt = CurrentMemoryContext;
	CompiledTemplate *volatile t = NULL;

	*err = NULL;
	PG_TRY();
	{
		t = template_compile(src, len, what);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		*err = CopyErrorData();
		FlushErrorState();
		t = NULL;
	}
	PG_END_TRY();
	return t;
}

/* Compile `src` both ways and compare; the compiled template or NULL */
static CompiledTemplate *
compile_checked(const char *src, int len, const char *what, RefTemplate *ref)
{
	ErrorData  *err;
	CompiledTemplate *t = try_compile(src, len, what, &err);

	ref_parse(src, len, ref);
	if (t == NULL)
	{
		char	   *want;

		if (err->sqlerrcode != ERRCODE_INVALID_PARAMETER_VALUE)
		{
			fuzz_finding("template-compile-sqlstate",
						 "template_compile raised %s: %s",
						 unpack_sql_state(err->sqlerrcode), err->message);
			return NULL;
		}
		if (ref->ok)
		{
			fuzz_finding("template-rejects-valid",
						 "template_compile rejected a valid template \"%s\": %s",
						 show(src, len), err->message);
			return NULL;
		}
		want = ref_error(src, ref, what);
		if (strcmp(err->message, want) != 0)
			fuzz_finding("template-error-message",
						 "template \"%s\": message \"%s\", expected \"%s\"",
						 show(src, len), err->message, want);
		if (!pg_verifymbstr(err->message, strlen(err->message), true))
			fuzz_finding("template-error-encoding",
						 "template \"%s\": the error message is not valid UTF-8",
						 show(src, len));
		return NULL;
	}
	if (!ref->ok)
	{
		fuzz_finding("template-accepts-invalid",
					 "template_compile accepted \"%s\" (expected: %s)",
					 show(src, len), ref_error(src, ref, what));
		return NULL;
	}

	/* the variables: distinct, first use first, and found by the index */
	if (t->nvars != ref->nvars)
		fuzz_finding("template-nvars", "template \"%s\": %d variables, expected %d",
					 show(src, len), t->nvars, ref->nvars);
	else
		for (int v = 0; v < t->nvars; v++)
		{
			if (t->var_lens[v] != ref->var_len[v] ||
				memcmp(t->vars[v], src + ref->var_off[v], ref->var_len[v]) != 0 ||
				t->vars[v][t->var_lens[v]] != '\0')
				fuzz_finding("template-var-name", "template \"%s\": variable %d is \"%s\"",
							 show(src, len), v, t->vars[v]);
			if (template_var_index(t, src + ref->var_off[v], ref->var_len[v]) != v)
				fuzz_finding("template-var-index", "template \"%s\": index of \"%s\" is not %d",
							 show(src, len), t->vars[v], v);
		}
	if (template_var_index(t, "no such variable", 16) != -1)
		fuzz_finding("template-var-index-absent", "template \"%s\": a name it lacks has an index",
					 show(src, len));
	if (t->nslots < 2 * t->nvars || (t->nslots & (t->nslots - 1)) != 0)
		fuzz_finding("template-slots", "template \"%s\": %d slots for %d variables",
					 show(src, len), t->nslots, t->nvars);

	/* the segments cover the literal text exactly, in order */
	{
		int			off = 0;
		StringInfoData got;
		StringInfoData want;

		initStringInfo(&got);
		initStringInfo(&want);
		for (int s = 0; s < t->nsegs; s++)
		{
			TemplateSegment *g = &t->segs[s];

			if (g->lit_off != off || g->lit_len < 0 ||
				g->lit_off + g->lit_len > t->literal_len ||
				g->var < -1 || g->var >= t->nvars)
			{
				fuzz_finding("template-segments", "template \"%s\": segment %d is {%d, %d, %d}",
							 show(src, len), s, g->lit_off, g->lit_len, g->var);
				return NULL;
			}
			off += g->lit_len;
			appendBinaryStringInfo(&got, t->literal + g->lit_off, g->lit_len);
			if (g->var >= 0)
				appendStringInfo(&got, "\x01%s\x02", t->vars[g->var]);
		}
		for (int i = 0; i < ref->nitems; i++)
		{
			if (ref->items[i].is_var)
				appendStringInfo(&want, "\x01%.*s\x02", ref->items[i].len,
								 src + ref->items[i].off);
			else
				appendBinaryStringInfo(&want, ref->lit.data + ref->items[i].off,
									   ref->items[i].len);
		}
		if (off != t->literal_len || strcmp(got.data, want.data) != 0 ||
			t->literal_len != ref->lit.len ||
			memcmp(t->literal, ref->lit.data, ref->lit.len) != 0)
			fuzz_finding("template-structure", "template \"%s\" compiled to \"%s\", expected \"%s\"",
						 show(src, len), show(got.data, got.len), show(want.data, want.len));
	}
	return t;
}

/* reference missing-name list (registry.c renders content, then system) */
typedef struct RefMissing
{
	StringInfoData list;
	List	   *seen;
} RefMissing;

static void
ref_note_missing(RefMissing *m, const char *name, int len)
{
	char	   *q;
	ListCell   *lc;

	if (m->list.data == NULL)
		initStringInfo(&m->list);
	if (m->list.len >= 1024)
	{
		if (m->list.len < 5 || strcmp(m->list.data + m->list.len - 5, ", ...") != 0)
			appendStringInfoString(&m->list, ", ...");
		return;
	}
	q = len > 64 ? psprintf("\"%.64s...\"", name) : psprintf("\"%.*s\"", len, name);
	foreach(lc, m->seen)
		if (strcmp(lfirst(lc), q) == 0)
			return;
	m->seen = lappend(m->seen, q);
	if (m->list.len > 0)
		appendStringInfoString(&m->list, ", ");
	appendStringInfoString(&m->list, q);
}

/* The reference rendering; NULL when a variable is missing */
static char *
ref_render(const char *src, const RefTemplate *r, JsonbContainer *vars,
		   RefMissing *m, int *outlen)
{
	StringInfoData out;
	bool		missing = false;

	initStringInfo(&out);
	/* missing names are noted in first-use order: walk the distinct list */
	for (int v = 0; v < r->nvars; v++)
	{
		JsonbValue *jv = vars ? getKeyJsonValueFromContainer(vars, src + r->var_off[v],
															 r->var_len[v], NULL) : NULL;

		if (jv == NULL || jv->type == jbvNull)
		{
			ref_note_missing(m, src + r->var_off[v], r->var_len[v]);
			missing = true;
		}
	}
	if (missing)
		return NULL;
	for (int i = 0; i < r->nitems; i++)
	{
		JsonbValue *jv;

		if (!r->items[i].is_var)
		{
			appendBinaryStringInfo(&out, r->lit.data + r->items[i].off, r->items[i].len);
			continue;
		}
		jv = getKeyJsonValueFromContainer(vars, src + r->items[i].off, r->items[i].len, NULL);
		switch (jv->type)
		{
			case jbvString:
				appendBinaryStringInfo(&out, jv->val.string.val, jv->val.string.len);
				break;
			case jbvNumeric:
				appendStringInfoString(&out, DatumGetCString(DirectFunctionCall1(numeric_out,
																				 NumericGetDatum(jv->val.numeric))));
				break;
			case jbvBool:
				appendStringInfoString(&out, jv->val.boolean ? "true" : "false");
				break;
			case jbvBinary:
				appendStringInfoString(&out, ref_compact(jv->val.binary.data));
				break;
			default:
				elog(ERROR, "reference: unexpected jsonb type %d", jv->type);
		}
	}
	*outlen = out.len;
	return out.data;
}

static void
render_checked(const char *src, int len, CompiledTemplate *t, const RefTemplate *r,
			   JsonbContainer *vars, StringInfo missing, RefMissing *refm)
{
	int			wantlen = 0;
	text	   *got = template_render(t, vars, missing);
	char	   *want = ref_render(src, r, vars, refm, &wantlen);

	if ((got == NULL) != (want == NULL))
	{
		fuzz_finding("render-missing-disagrees",
					 "template \"%s\": template_render %s, the reference %s",
					 show(src, len), got ? "rendered" : "found a variable missing",
					 want ? "rendered" : "found a variable missing");
		return;
	}
	if (got && (VARSIZE(got) - VARHDRSZ != wantlen ||
				memcmp(VARDATA(got), want, wantlen) != 0))
		fuzz_finding("render-mismatch", "template \"%s\" rendered \"%s\", expected \"%s\"",
					 show(src, len), show(VARDATA(got), VARSIZE(got) - VARHDRSZ),
					 show(want, wantlen));
}

/*
 * template: TEMPLATE [SEP VARIABLES [SEP SYSTEM_TEMPLATE]], SEP = "\n%%\n".
 * VARIABLES is JSON text (anything: non-objects are refused by
 * template_check_variables, as prompt_render refuses them).
 */
static int
run_template(const uint8 *data, size_t size)
{
	const char *d = (const char *) data;
	const char *p1 = memmem(d, size, SEP, SEPLEN);
	size_t		tlen = p1 ? (size_t) (p1 - d) : size;
	const char *vars_s = NULL;
	size_t		vlen = 0;
	const char *sys_s = NULL;
	size_t		slen = 0;
	char	   *src;
	char	   *sys = NULL;
	RefTemplate ref;
	RefTemplate sref;
	CompiledTemplate *t;
	CompiledTemplate *st = NULL;
	Jsonb	   *jb = NULL;
	StringInfoData missing = {NULL, 0, 0, 0};
	RefMissing refm;

	if (p1)
	{
		const char *p2;

		vars_s = p1 + SEPLEN;
		vlen = size - tlen - SEPLEN;
		p2 = memmem(vars_s, vlen, SEP, SEPLEN);
		if (p2)
		{
			sys_s = p2 + SEPLEN;
			slen = vlen - (p2 - vars_s) - SEPLEN;
			vlen = p2 - vars_s;
		}
	}
	/* a template is a text: valid in the server encoding, no NUL */
	if (!valid_text(d, tlen) || (sys_s && !valid_text(sys_s, slen)))
		return -1;

	/* like registry.c: VARDATA_ANY of a text, not NUL-terminated */
	src = exact_copy(d, tlen, false);
	t = compile_checked(src, (int) tlen, "template", &ref);
	if (sys_s)
	{
		sys = exact_copy(sys_s, slen, false);
		st = compile_checked(sys, (int) slen, "system template", &sref);
	}
	if (t == NULL)
		return 0;

	if (vars_s)
	{
		char	   *vtext;

		if (!valid_text(vars_s, vlen))
			return 0;
		vtext = exact_copy(vars_s, vlen, true);
		jb = try_jsonb(vtext);
		if (jb == NULL)
			return 0;
		check_compact(&jb->root, "variables");

		/* prompt_render: anything but an object is refused, with 22023 */
		{
			MemoryContext cxt = CurrentMemoryContext;
			volatile bool refused = false;

			PG_TRY();
			{
				template_check_variables(jb);
			}
			PG_CATCH();
			{
				ErrorData  *e;

				MemoryContextSwitchTo(cxt);
				e = CopyErrorData();
				FlushErrorState();
				refused = true;
				if (e->sqlerrcode != ERRCODE_INVALID_PARAMETER_VALUE)
					fuzz_finding("check-variables-sqlstate", "template_check_variables raised %s",
								 unpack_sql_state(e->sqlerrcode));
			}
			PG_END_TRY();
			if (refused != !JB_ROOT_IS_OBJECT(jb))
				fuzz_finding("check-variables", "template_check_variables %s a JSON %s",
							 refused ? "refused" : "accepted",
							 JB_ROOT_IS_OBJECT(jb) ? "object" : "non-object");
			if (refused)
				return 0;
		}
	}

	memset(&refm, 0, sizeof(refm));
	render_checked(src, (int) tlen, t, &ref, jb ? &jb->root : NULL, &missing, &refm);
	if (st)
		render_checked(sys, (int) slen, st, &sref, jb ? &jb->root : NULL, &missing, &refm);
	if ((missing.data == NULL) != (refm.list.data == NULL) ||
		(missing.data && strcmp(missing.data, refm.list.data) != 0))
		fuzz_finding("missing-list", "template \"%s\": missing list \"%s\", expected \"%s\"",
					 show(src, tlen), missing.data ? missing.data : "(none)",
					 refm.list.data ? refm.list.data : "(none)");
	else if (missing.data && missing.len > 1024 + 5 + 64 + 8)
		fuzz_finding("missing-list-long", "missing list of %d bytes", missing.len);
	return 0;
}

static bool
template_error_ok(const ErrorData *e)
{
	/* 22023 bad template or variables, 54000 too long, 54001 too deep */
	return e->sqlerrcode == ERRCODE_INVALID_PARAMETER_VALUE ||
		e->sqlerrcode == ERRCODE_PROGRAM_LIMIT_EXCEEDED ||
		e->sqlerrcode == ERRCODE_STATEMENT_TOO_COMPLEX ||
		e->sqlerrcode == ERRCODE_OUT_OF_MEMORY;
}

/* ---------- provider bodies ---------- */

static bool
check_string(const char *what, const char *s)
{
	if (s && !pg_verifymbstr(s, strlen(s), true))
	{
		fuzz_finding(psprintf("response-%s-encoding", what),
					 "GenResponse.%s is not valid in the server encoding", what);
		return false;
	}
	return true;
}

static bool
tokens_ok(int64 n)
{
	return n >= 0 && n <= (INT64CONST(1) << 53);
}

/* One HTTP 200 answer of `ops`'s kind through provider_outcome */
static int
run_provider(const ProviderOps *ops, const uint8 *data, size_t size)
{
	ProviderConf p;
	HttpRequest req;
	GenRequest	gen;
	GenResponse out;
	Failure		f;
	bool		ok;

	memset(&p, 0, sizeof(p));
	p.name = "fuzz";
	p.ops = ops;
	memset(&req, 0, sizeof(req));
	req.outcome = HTTP_OK;
	req.status = 200;
	req.retry_after_ms = -1;
	req.should_retry = -1;
	/* like http.c's write callback: the body, NUL-terminated */
	req.response = exact_copy((const char *) data, size, true);
	req.response_len = size;
	strlcpy(req.content_type, "application/json", sizeof(req.content_type));

	/*
	 * Half the inputs as answers to a json_schema call (the first byte
	 * decides), so that the structured-answer paths are fuzzed too: the
	 * parse of the content, Anthropic's forced tool
	 */
	memset(&gen, 0, sizeof(gen));
	if (size > 0 && (data[0] & 1))
	{
		gen.schema_name = "answer";
		gen.schema = "{\"type\": \"object\"}";
		gen.json_format = (data[0] & 2) != 0;
	}
	/* and some as answers to an embeddings request of two inputs (OpenAI kinds) */
	if (size > 0 && (data[0] & 4) && ops->parse_embed_response != NULL)
	{
		gen.embedding = true;
		gen.inputs = list_make2("one", "two");
		gen.dimensions = (data[0] & 8) ? 3 : 0;
	}
	ok = provider_outcome(&p, &gen, &req, FUZZ_KEY, &out, &f);
	if (!ok)
	{
		if (f.message == NULL || f.error_class == NULL ||
			strcmp(f.error_class, "bad_response") != 0 ||
			f.sqlstate != ERRCODE_MAESTER_BAD_RESPONSE)
			fuzz_finding("outcome-failure-shape", "a refused 200 answer: class %s, message %s",
						 f.error_class ? f.error_class : "(null)",
						 f.message ? f.message : "(null)");
		return 0;
	}
	if (out.content == NULL)
		fuzz_finding("outcome-no-content", "an accepted answer without content");
	if (gen.embedding)
	{
		if (out.nvectors != 2 || out.dims <= 0 || (gen.dimensions > 0 && out.dims != gen.dimensions))
			fuzz_finding("embed-shape", "%d vectors of %d dimensions accepted for 2 inputs",
						 out.nvectors, out.dims);
		for (int v = 0; v < out.nvectors; v++)
			for (int d = 0; out.vectors[v] && d < out.dims; d++)
				if (!isfinite(out.vectors[v][d]))
					fuzz_finding("embed-value", "a value that is not finite was accepted");
		for (int v = 0; v < out.nvectors; v++)
			if (out.vectors[v] == NULL)
				fuzz_finding("embed-missing", "embedding %d missing from an accepted answer", v);
	}
	check_string("content", out.content);
	check_string("refusal", out.refusal);
	check_string("finish_reason", out.finish_reason);
	if (out.tool_calls && check_string("tool_calls", out.tool_calls))
	{
		/* what generation_values gives jsonb_in, which must not throw there */
		char	   *problem = NULL;
		Jsonb	   *calls = json_parse_any(out.tool_calls, &problem);

		if (calls == NULL || !JB_ROOT_IS_ARRAY(calls) || JB_ROOT_IS_SCALAR(calls))
			fuzz_finding("outcome-tool-calls", "tool calls are not a JSON array: %s",
						 problem ? problem : out.tool_calls);
		else
			for (int i = 0; i < JsonContainerSize(&calls->root); i++)
			{
				JsonbValue *e = getIthJsonbValueFromContainer(&calls->root, i);

				if (e->type != jbvBinary || json_get(e->val.binary.data, "id") == NULL ||
					json_get(e->val.binary.data, "name") == NULL ||
					json_get(e->val.binary.data, "arguments") == NULL)
					fuzz_finding("outcome-tool-call-shape", "a tool call is not {id, name, arguments}");
			}
	}
	if (out.parsed && out.content)
	{
		char	   *problem = NULL;
		Jsonb	   *again = json_parse_any(out.content, &problem);

		if (again == NULL || compareJsonbContainers(&again->root, &out.parsed->root) != 0)
			fuzz_finding("outcome-parsed", "parsed is not what the content parses to");
	}
	check_string("served_model", out.served_model);
	check_string("response_id", out.response_id);
	if (out.usage_present)
	{
		if (!tokens_ok(out.output_tokens) || !tokens_ok(out.cached_input_tokens) ||
			!tokens_ok(out.cache_write_tokens) || out.input_tokens < 0 ||
			out.input_tokens < out.cached_input_tokens + out.cache_write_tokens)
			fuzz_finding("outcome-usage",
						 "usage in=%lld out=%lld cached=%lld write=%lld",
						 (long long) out.input_tokens, (long long) out.output_tokens,
						 (long long) out.cached_input_tokens,
						 (long long) out.cache_write_tokens);
	}
	return 0;
}

static int
run_openai(const uint8 *data, size_t size)
{
	return run_provider(&openai_ops, data, size);
}

static int
run_anthropic(const uint8 *data, size_t size)
{
	return run_provider(&anthropic_ops, data, size);
}

/* An error answer (HTTP 429) through provider_outcome: the summary */
static int
run_error_summary(const uint8 *data, size_t size)
{
	ProviderConf p;
	HttpRequest req;
	GenResponse out;
	Failure		f;
	const char *prefix = "fuzz answered HTTP 429: ";
	const char *summary;

	memset(&p, 0, sizeof(p));
	p.name = "fuzz";
	p.ops = size > 0 && (data[0] & 1) ? &anthropic_ops : &openai_ops;
	memset(&req, 0, sizeof(req));
	req.outcome = HTTP_OK;
	req.status = 429;
	req.retry_after_ms = 1000;
	req.should_retry = -1;		/* no x-should-retry header (http_request_init) */
	req.response = exact_copy((const char *) data, size, true);
	req.response_len = size;
	strlcpy(req.content_type, "application/json", sizeof(req.content_type));

	if (provider_outcome(&p, NULL, &req, FUZZ_KEY, &out, &f))
	{
		fuzz_finding("error-accepted", "a 429 answer was taken for a success");
		return 0;
	}
	/* an exhausted quota (provider.c quota_exhausted) is not retried */
	if (f.error_class != NULL && strcmp(f.error_class, "quota") == 0 &&
		strstr(req.response, "insufficient_quota") != NULL &&
		!f.retryable && f.http_status == 429)
		return 0;
	if (f.message == NULL || strncmp(f.message, prefix, strlen(prefix)) != 0 ||
		strcmp(f.error_class, "rate_limited") != 0 || !f.retryable ||
		f.retry_after_ms != 1000 || f.http_status != 429)
	{
		fuzz_finding("error-shape", "a 429 answer: class %s, message %s",
					 f.error_class ? f.error_class : "(null)",
					 f.message ? f.message : "(null)");
		return 0;
	}
	summary = f.message + strlen(prefix);
	if (strstr(summary, FUZZ_KEY) != NULL)
		fuzz_finding("error-key-leak", "the summary shows the key: %s", summary);
	if (strlen(summary) > 303)
		fuzz_finding("error-summary-long", "a summary of %zu bytes", strlen(summary));
	for (const char *c = summary; *c; c++)
		if ((unsigned char) *c < 0x20)
		{
			fuzz_finding("error-summary-control", "a control character in the summary");
			break;
		}
	if (!pg_verifymbstr(summary, strlen(summary), true))
		fuzz_finding("error-summary-encoding", "the summary is not valid UTF-8: %s",
					 show(summary, strlen(summary)));
	return 0;
}

static bool
provider_error_ok(const ErrorData *e)
{
	return false;				/* "parsing never throws on it" (provider.c) */
}

/* ---------- response headers ---------- */

/*
 * retry_after: header lines (split after each "\n"), each handed to
 * http.c's header callback as curl does (one line, not NUL-terminated).
 */
static int
run_retry_after(const uint8 *data, size_t size)
{
	HttpRequest req;
	size_t		i = 0;

	memset(&req, 0, sizeof(req));
	req.retry_after_ms = -1;
	while (i < size)
	{
		const uint8 *nl = memchr(data + i, '\n', size - i);
		size_t		n = nl ? (size_t) (nl - (data + i)) + 1 : size - i;
		char	   *line = exact_copy((const char *) data + i, n, false);
		int			rc = fuzz_http_header(&req, line, n);

		if (rc != (int) n)
			fuzz_finding("header-cb-return", "the header callback returned %d for %zu bytes", rc, n);
		if (!(req.retry_after_ms == -1 || req.retry_after_ms >= 0))
			fuzz_finding("retry-after-negative", "retry_after_ms = %g after \"%s\"",
						 req.retry_after_ms, show(line, n));
		else if (!isfinite(req.retry_after_ms))
			fuzz_finding("retry-after-infinite",
						 "retry_after_ms = %g after \"%s\" (export.c converts it to long)",
						 req.retry_after_ms, show(line, n));
		else if (req.retry_after_ms >= 9.2e18)
			fuzz_finding("retry-after-overflows-long",
						 "retry_after_ms = %g after \"%s\": (long) of it in export.c is undefined",
						 req.retry_after_ms, show(line, n));
		i += n;
	}
	return 0;
}

/* ---------- a grader's verdict ---------- */

static int
run_rubric(const uint8 *data, size_t size)
{
	double		score = -1;
	bool		passed = false;
	char	   *reason = NULL;
	char	   *answer;

	/* the grading call's content: valid text (provider_outcome checked it) */
	if (!valid_text((const char *) data, size))
		return -1;
	answer = exact_copy((const char *) data, size, true);
	rubric_verdict(answer, &score, &passed, &reason);
	if (!(score >= 0 && score <= 1))
		fuzz_finding("rubric-score", "score %g", score);
	if (!passed && reason == NULL)
		fuzz_finding("rubric-reason", "a failed verdict without a reason");
	if (reason && !pg_verifymbstr(reason, strlen(reason), true))
		fuzz_finding("rubric-reason-encoding", "the reason is not valid UTF-8");
	return 0;
}

const FuzzTarget fuzz_targets[] = {
	{"template", run_template, template_error_ok},
	{"openai", run_openai, provider_error_ok},
	{"anthropic", run_anthropic, provider_error_ok},
	{"error_summary", run_error_summary, provider_error_ok},
	{"retry_after", run_retry_after, NULL},
	{"rubric", run_rubric, NULL},
};
const int	fuzz_ntargets = lengthof(fuzz_targets);
