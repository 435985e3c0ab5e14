/*-------------------------------------------------------------------------
 *
 * embed.c
 *	  maester.embed: embeddings through the gateway.
 *
 * The inputs are cut into requests bounded by count (2,048, OpenAI's
 * limit) and by worst-case tokens (a token per UTF-8 byte; the provider's
 * embedding_batch_tokens, else OpenAI's 300,000), and each request is a
 * call of the call machine (call_prepare_embedding): routed, paced,
 * budgeted, metered in the ledger (purpose embedding), traced, retried
 * and failed over like a chat call, several in flight at once on the
 * backend's multi handle.  Results come back in input order.
 *
 * One bad input must fail alone.  An empty input is refused here; an input
 * over the model's context is found by the provider, which refuses the
 * whole request (HTTP 400, nothing billed): the request is then split in
 * two and each half sent again, down to the one input that fails, so the
 * others succeed and nothing is ever truncated.
 *
 * Vectors are checked (their count and indexes, one length across the
 * answer, the length asked for or the model row's embedding_dimensions)
 * and L2-normalized unless options.normalize is false.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "call.h"
#include "ledger.h"
#include "meter.h"
#include "sha256.h"
#include "catalog.h"
#include "jsonutil.h"
#include "request.h"
#include "router.h"
#include "tenant.h"
#include "util.h"

/* Most inputs in one request (OpenAI's limit) */
#define EMBED_MAX_BATCH_INPUTS 2048
/* Most worst-case tokens in one request when the provider says nothing */
#define EMBED_DEFAULT_BATCH_TOKENS 300000
/* Attributes of maester.embedding_result */
#define EMBED_RESULT_NATTS 8

#define EMBED_OPTIONS "dimensions, input_type, normalize, cache, concurrency, timeout_ms, max_attempts, fallback, tags, extra"

/* One input's result */
typedef struct EmbedSlot
{
	float4	   *vector;			/* NULL: failed (or not yet) */
	int			dims;
	int64		tokens;			/* its share of the request's input tokens */
	const char *model;			/* the identity of the model that made it */
	const char *variant;		/* and its cache variant (cache_variant) */
	bool		cached;			/* from the cache (else: to keep there) */
	uint8		sha[32];		/* options.cache: the input's SHA-256 */
	int			sqlstate;
	const char *error_class;
	char	   *message;
	char	   *detail;
} EmbedSlot;

/* A request still to send: the inputs it holds, by index */
typedef struct EmbedBatch
{
	int			n;
	int		   *idx;
	bool		probe;			/* the probe of a refusal (see PROBE_*) */
} EmbedBatch;

typedef struct EmbedState
{
	char	  **inputs;
	int			ninputs;
	EmbedSlot  *slots;
	List	   *queue;			/* of EmbedBatch *, to send */
	const char *model;
	CallOptions opts;
	bool		normalize;
	bool		cache;			/* options.cache */
	int			model_dims;		/* the first target's model row's; 0: unknown */
	int			max_input_tokens;	/* and its input limit; 0: unknown */
	RouteTarget *first;			/* the route's first target */
	MemoryContext cxt;
	int			ordinal;
	bool		answered;		/* a request of this call succeeded */
	int			probe;			/* PROBE_*: does the provider take anything? */
	List	   *held;			/* refused batches waiting for the probe */
} EmbedState;

/*
 * A provider that refuses every request (a parameter it does not take,
 * say) must not be sent one request per input.  So when a request is
 * refused before any succeeded, its shortest input is sent alone first:
 * if that is refused too, the provider takes nothing, and the held
 * requests fail; else they are split down to the inputs it refuses.
 */
#define PROBE_NONE		0
#define PROBE_SENT		1
#define PROBE_TAKEN		2
#define PROBE_REFUSED	3

static char *cache_variant(EmbedState *st, const RouteTarget *t);

static void
embed_option_error(const char *key, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("option \"%s\" must be %s", key, what)));
}

/*
 * The options: dimensions, input_type, normalize and concurrency are
 * embed()'s own; timeout_ms, max_attempts, fallback, tags and extra are a
 * call's (request.c checks them).  Raises 22023.
 */
static void
embed_parse_options(Jsonb *opts, EmbedState *st, int *concurrency)
{
	JsonbParseState *ps = NULL;
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;
	JsonbValue *common;
	int			dimensions = 0;
	const char *input_type = NULL;

	st->normalize = true;
	*concurrency = 4;
	if (opts != NULL && !JB_ROOT_IS_OBJECT(opts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a JSON object"),
				 errhint("Known options: " EMBED_OPTIONS ".")));
	(void) pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	if (opts != NULL)
	{
		it = JsonbIteratorInit(&opts->root);
		while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			JsonbValue	v;
			char	   *key;

			if (tok != WJB_KEY)
				continue;
			key = pnstrdup(k.val.string.val, k.val.string.len);
			(void) JsonbIteratorNext(&it, &v, true);
			if (strcmp(key, "dimensions") == 0 || strcmp(key, "concurrency") == 0)
			{
				double		d = v.type == jbvNumeric ? json_numeric_double(v.val.numeric) : -1;
				int			max = strcmp(key, "dimensions") == 0 ? 65536 : MAESTER_MAX_CONCURRENCY;

				if (!(d >= 1 && d <= max) || d != floor(d))
					embed_option_error(key, psprintf("an integer between 1 and %d", max));
				if (key[0] == 'd')
					dimensions = (int) d;
				else
					*concurrency = (int) d;
			}
			else if (strcmp(key, "input_type") == 0)
			{
				if (v.type != jbvString ||
					!((v.val.string.len == 5 && memcmp(v.val.string.val, "query", 5) == 0) ||
					  (v.val.string.len == 8 && memcmp(v.val.string.val, "document", 8) == 0)))
					embed_option_error(key, "\"query\" or \"document\"");
				input_type = pnstrdup(v.val.string.val, v.val.string.len);
			}
			else if (strcmp(key, "normalize") == 0 || strcmp(key, "cache") == 0)
			{
				if (v.type != jbvBool)
					embed_option_error(key, "a boolean");
				if (key[0] == 'n')
					st->normalize = v.val.boolean;
				else
					st->cache = v.val.boolean;
			}
			else if (strcmp(key, "timeout_ms") == 0 || strcmp(key, "max_attempts") == 0 ||
					 strcmp(key, "fallback") == 0 || strcmp(key, "tags") == 0 ||
					 strcmp(key, "extra") == 0)
			{
				(void) pushJsonbValue(&ps, WJB_KEY, &k);
				(void) pushJsonbValue(&ps, WJB_VALUE, &v);
			}
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("unknown option \"%s\" of embed", key),
						 errhint("Known options: " EMBED_OPTIONS ".")));
		}
	}
	common = pushJsonbValue(&ps, WJB_END_OBJECT, NULL);
	request_parse_options(JsonbValueToJsonb(common), &st->opts);
	st->opts.gen.dimensions = dimensions;
	st->opts.gen.input_type = input_type;
}

/* Fail input i with the error of call c */
static void
slot_fail(EmbedState *st, int i, Call *c)
{
	EmbedSlot  *s = &st->slots[i];

	s->sqlstate = c->sqlstate;
	s->error_class = c->error_class ? c->error_class : "error";
	s->message = MemoryContextStrdup(st->cxt, c->message ? c->message : "");
	s->detail = c->detail ? MemoryContextStrdup(st->cxt, c->detail) : NULL;
}

/* Fail input i with an error of its own */
static void
slot_fail_with(EmbedState *st, int i, int sqlstate, const char *error_class, char *message)
{
	EmbedSlot  *s = &st->slots[i];

	s->sqlstate = sqlstate;
	s->error_class = error_class;
	s->message = MemoryContextStrdup(st->cxt, message);
	s->detail = NULL;
}

/* A batch of inputs from[0..n), copied into the state's memory */
static EmbedBatch *
batch_of(EmbedState *st, const int *from, int n)
{
	EmbedBatch *b = MemoryContextAlloc(st->cxt, sizeof(EmbedBatch));

	b->n = n;
	b->probe = false;
	b->idx = MemoryContextAlloc(st->cxt, sizeof(int) * n);
	memcpy(b->idx, from, sizeof(int) * n);
	return b;
}

/* Send each half of a refused batch again */
static void
split_batch(EmbedState *st, EmbedBatch *b)
{
	int			half = b->n / 2;

	st->queue = lappend(st->queue, batch_of(st, b->idx, half));
	st->queue = lappend(st->queue, batch_of(st, b->idx + half, b->n - half));
}

/*
 * The probe has answered: the held batches are split (the provider takes
 * inputs), or fail with the probe's refusal (it takes none); in st->cxt
 */
static void
release_held(EmbedState *st, Call *refusal)
{
	ListCell   *lc;

	foreach(lc, st->held)
	{
		EmbedBatch *h = (EmbedBatch *) lfirst(lc);

		if (refusal)
			for (int k = 0; k < h->n; k++)
				slot_fail(st, h->idx[k], refusal);
		else
			split_batch(st, h);
	}
	st->held = NIL;
}

static Call *
embed_next(void *arg)
{
	EmbedState *st = (EmbedState *) arg;
	EmbedBatch *b;
	MemoryContext cxt;
	MemoryContext old;
	List	   *inputs = NIL;
	Call	   *c;

	if (st->queue == NIL)
		return NULL;
	b = (EmbedBatch *) linitial(st->queue);
	old = MemoryContextSwitchTo(st->cxt);
	st->queue = list_delete_first(st->queue);
	MemoryContextSwitchTo(old);
	cxt = AllocSetContextCreate(st->cxt, "maester embedding call", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	for (int k = 0; k < b->n; k++)
		inputs = lappend(inputs, st->inputs[b->idx[k]]);
	c = call_prepare_embedding(inputs, st->model, &st->opts, ++st->ordinal, cxt);
	MemoryContextSwitchTo(old);
	c->driver_data = b;			/* which inputs it holds, for embed_done */
	return c;
}

static void
embed_done(Call *c, void *arg)
{
	EmbedState *st = (EmbedState *) arg;
	EmbedBatch *b = (EmbedBatch *) c->driver_data;
	GenResponse *r = &c->g.resp;

	if (c->phase == PHASE_FAILED)
	{
		/*
		 * A request the provider refused (400) may hold one input it cannot
		 * take (too long for the model): send each half again, so that only
		 * that input fails -- once the provider is known to take some
		 * (PROBE_*).
		 */
		bool		refused = c->error_class && strcmp(c->error_class, "bad_request") == 0;
		/* the queue lives as long as embed() (done runs in a call's move) */
		MemoryContext old = MemoryContextSwitchTo(st->cxt);

		if (b->probe)
		{
			/* the probe: the provider takes an input, or nothing */
			st->probe = refused ? PROBE_REFUSED : PROBE_TAKEN;
			slot_fail(st, b->idx[0], c);
			release_held(st, refused ? c : NULL);
		}
		else if (refused && b->n > 1 && st->answered)
			split_batch(st, b);
		else if (refused && b->n > 1 && st->probe == PROBE_NONE)
		{
			/* refused before anything was taken: probe with its shortest input */
			int			j = 0;
			int			k2 = 0;
			EmbedBatch *rest = batch_of(st, b->idx, b->n - 1);
			EmbedBatch *probe;

			for (int k = 1; k < b->n; k++)
				if (strlen(st->inputs[b->idx[k]]) < strlen(st->inputs[b->idx[j]]))
					j = k;
			for (int k = 0; k < b->n; k++)
				if (k != j)
					rest->idx[k2++] = b->idx[k];
			probe = batch_of(st, &b->idx[j], 1);
			probe->probe = true;
			st->probe = PROBE_SENT;
			st->queue = lappend(st->queue, probe);
			st->held = lappend(st->held, rest);
		}
		else if (refused && b->n > 1 && st->probe == PROBE_SENT)
			st->held = lappend(st->held, batch_of(st, b->idx, b->n));
		else
			for (int k = 0; k < b->n; k++)
				slot_fail(st, b->idx[k], c);
		MemoryContextSwitchTo(old);
	}
	else if (c->plan->targets[c->ti].embedding_dimensions > 0 && st->opts.gen.dimensions == 0 &&
			 r->dims != c->plan->targets[c->ti].embedding_dimensions)
	{
		/* the model that answered: a fallback target may be another */
		char	   *msg = psprintf("%s answered embeddings of %d dimensions; model \"%s\" has %d (maester.model.embedding_dimensions)",
								   c->g.provider, r->dims, c->plan->targets[c->ti].name,
								   c->plan->targets[c->ti].embedding_dimensions);

		(void) call_finish_isolated(c);		/* it was answered, and billed */
		st->answered = true;
		if (b->probe)
		{
			MemoryContext old = MemoryContextSwitchTo(st->cxt);

			st->probe = PROBE_TAKEN;
			release_held(st, NULL);
			MemoryContextSwitchTo(old);
		}
		for (int k = 0; k < b->n; k++)
			slot_fail_with(st, b->idx[k], ERRCODE_MAESTER_BAD_RESPONSE, "bad_response", msg);
	}
	else
	{
		int64		bytes = 0;
		int64		given = 0;
		const char *model = MemoryContextStrdup(st->cxt, c->plan->targets[c->ti].name);
		const char *variant = st->cache ?
			MemoryContextStrdup(st->cxt, cache_variant(st, &c->plan->targets[c->ti])) : NULL;

		(void) call_finish_isolated(c);
		st->answered = true;
		if (b->probe)
		{
			MemoryContext old = MemoryContextSwitchTo(st->cxt);

			st->probe = PROBE_TAKEN;
			release_held(st, NULL);
			MemoryContextSwitchTo(old);
		}
		for (int k = 0; k < b->n; k++)
			bytes += strlen(st->inputs[b->idx[k]]);
		for (int k = 0; k < b->n; k++)
		{
			EmbedSlot  *s = &st->slots[b->idx[k]];
			float4	   *v = r->vectors[k];
			double		norm = 0;

			if (st->normalize)
			{
				for (int d = 0; d < r->dims; d++)
					norm += (double) v[d] * v[d];
				norm = sqrt(norm);
				if (norm > 0)
					for (int d = 0; d < r->dims; d++)
						v[d] = (float4) (v[d] / norm);
			}
			s->vector = MemoryContextAlloc(st->cxt, sizeof(float4) * r->dims);
			memcpy(s->vector, v, sizeof(float4) * r->dims);
			s->dims = r->dims;
			s->model = model;
			s->variant = variant;
			/* the request's tokens, shared by bytes (the last gets the rest) */
			s->tokens = k == b->n - 1 ? r->input_tokens - given :
				bytes > 0 ? r->input_tokens * (int64) strlen(st->inputs[b->idx[k]]) / bytes : 0;
			given += s->tokens;
		}
	}
	MemoryContextDelete(c->cxt);
}

/*
 * The batch limits of the route's targets: the fewest tokens any of their
 * providers takes in one request, and the first target's model dimensions
 */
static int64
batch_tokens(EmbedState *st)
{
	RoutePlan  *plan = router_plan(st->model ? st->model : "default_embedding");
	int64		limit = EMBED_DEFAULT_BATCH_TOKENS;

	for (int i = 0; i < plan->ntargets; i++)
		if (plan->targets[i].provider->embedding_batch_tokens > 0)
			limit = Min(limit, plan->targets[i].provider->embedding_batch_tokens);
	st->model_dims = plan->ntargets > 0 ? plan->targets[0].embedding_dimensions : 0;
	st->max_input_tokens = plan->ntargets > 0 ? plan->targets[0].max_input_tokens : 0;
	st->first = plan->ntargets > 0 ? &plan->targets[0] : NULL;
	return limit;
}

/*
 * What besides the model's identity and the dimensions makes a vector, as
 * the cache's variant: the provider and model id that answered, normalize,
 * input_type and options.extra (SHA-256 hex of them)
 */
static char *
cache_variant(EmbedState *st, const RouteTarget *t)
{
	StringInfoData s;
	const char *parts[1];
	int			lens[1];
	char	   *hex = palloc(MAESTER_SHA256_HEXLEN + 1);

	initStringInfo(&s);
	appendStringInfo(&s, "%s%c%s%c%d%c%s%c", t->provider->name, 0, t->model, 0,
					 st->normalize ? 1 : 0, 0, st->opts.gen.input_type ? st->opts.gen.input_type : "", 0);
	if (st->opts.gen.extra)
		appendStringInfoString(&s, JsonbToCString(NULL, &st->opts.gen.extra->root,
												  VARSIZE(st->opts.gen.extra)));
	parts[0] = s.data;
	lens[0] = s.len;
	maester_sha256_hex(parts, lens, 1, hex);
	return hex;
}

/* Slots by input SHA-256, for the cache lookup */
static int
sha_cmp(const void *a, const void *b)
{
	return memcmp(((const EmbedSlot *const *) a)[0]->sha, ((const EmbedSlot *const *) b)[0]->sha, 32);
}

/*
 * options.cache: the inputs the cache holds for this tenant, the route's
 * first model and these dimensions, into their slots (then not sent)
 */
static void
cache_lookup(EmbedState *st)
{
	Datum	   *shas = palloc(sizeof(Datum) * Max(st->ninputs, 1));
	EmbedSlot **sorted = palloc(sizeof(EmbedSlot *) * Max(st->ninputs, 1));
	int			n = 0;
	Oid			types[5] = {TEXTOID, TEXTOID, INT4OID, TEXTOID, BYTEAARRAYOID};
	Datum		values[5];
	OwnerScope	scope;
	char	   *variant;

	if (st->first == NULL)
		return;
	for (int i = 0; i < st->ninputs; i++)
	{
		bytea	   *b;
		const char *parts[1];
		int			lens[1];

		if (st->inputs[i] == NULL || st->inputs[i][0] == '\0')
			continue;
		parts[0] = st->inputs[i];
		lens[0] = strlen(st->inputs[i]);
		maester_sha256(parts, lens, 1, st->slots[i].sha);
		b = palloc(VARHDRSZ + 32);
		SET_VARSIZE(b, VARHDRSZ + 32);
		memcpy(VARDATA(b), st->slots[i].sha, 32);
		shas[n] = PointerGetDatum(b);
		sorted[n++] = &st->slots[i];
		CHECK_FOR_INTERRUPTS();
	}
	if (n == 0)
		return;
	/* rows are matched to inputs by a binary search, not a scan of them all */
	qsort(sorted, n, sizeof(EmbedSlot *), sha_cmp);
	variant = cache_variant(st, st->first);
	values[0] = CStringGetTextDatum(maester_current_tenant());
	values[1] = CStringGetTextDatum(st->first->name);
	values[2] = Int32GetDatum(st->opts.gen.dimensions);
	values[3] = CStringGetTextDatum(variant);
	values[4] = PointerGetDatum(construct_array(shas, n, BYTEAOID, -1, false, TYPALIGN_INT));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	maester_become_owner(maester_table_oid("embedding_cache"), &scope);
	if (SPI_execute_with_args("SELECT input_sha256, embedding, input_tokens FROM maester.embedding_cache "
							  "WHERE tenant OPERATOR(pg_catalog.=) $1 AND model OPERATOR(pg_catalog.=) $2 "
							  "AND dimensions OPERATOR(pg_catalog.=) $3 AND variant OPERATOR(pg_catalog.=) $4 "
							  "AND input_sha256 OPERATOR(pg_catalog.=) ANY ($5)",
							  5, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read maester.embedding_cache");
	maester_restore_user(&scope);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		bytea	   *sha = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull));
		ArrayType  *vec = DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull));
		int32		tokens = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 3, &isnull));
		int			dims = ArrayGetNItems(ARR_NDIM(vec), ARR_DIMS(vec));
		EmbedSlot	key;
		EmbedSlot  *keyp = &key;
		EmbedSlot **hit;

		CHECK_FOR_INTERRUPTS();
		/* a length the model no longer has is no hit (its row was changed) */
		if (VARSIZE_ANY_EXHDR(sha) != 32 || dims == 0 ||
			(st->opts.gen.dimensions == 0 && st->model_dims > 0 && dims != st->model_dims))
			continue;
		memcpy(key.sha, VARDATA_ANY(sha), 32);
		hit = bsearch(&keyp, sorted, n, sizeof(EmbedSlot *), sha_cmp);
		if (hit == NULL)
			continue;
		/* the first of equal inputs, then every one (a text repeated in one call is one hit each) */
		while (hit > sorted && memcmp(hit[-1]->sha, key.sha, 32) == 0)
			hit--;
		for (; hit < sorted + n && memcmp((*hit)->sha, key.sha, 32) == 0; hit++)
		{
			EmbedSlot  *s = *hit;

			if (s->vector)
				continue;
			s->vector = MemoryContextAlloc(st->cxt, sizeof(float4) * dims);
			memcpy(s->vector, ARR_DATA_PTR(vec), sizeof(float4) * dims);
			s->dims = dims;
			s->tokens = tokens;
			s->model = MemoryContextStrdup(st->cxt, st->first->name);
			s->cached = true;
		}
	}
	SPI_finish();
}

/* Keep what the provider answered in the cache (cache_record) */
static void
cache_store_fn(void *arg)
{
	EmbedState *st = (EmbedState *) arg;
	OwnerScope	scope;
	Datum	   *models = palloc(sizeof(Datum) * Max(st->ninputs, 1));
	Datum	   *shas = palloc(sizeof(Datum) * Max(st->ninputs, 1));
	Datum	   *vecs = palloc(sizeof(Datum) * Max(st->ninputs, 1));
	Datum	   *toks = palloc(sizeof(Datum) * Max(st->ninputs, 1));
	Datum	   *variants = palloc(sizeof(Datum) * Max(st->ninputs, 1));
	int			k = 0;
	Oid			types[7] = {TEXTOID, INT4OID, TEXTARRAYOID, BYTEAARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
	TEXTARRAYOID};
	Datum		values[7];

	for (int i = 0; i < st->ninputs; i++)
	{
		EmbedSlot  *s = &st->slots[i];
		bytea	   *b;
		StringInfoData t;

		if (!s->vector || s->cached)
			continue;
		b = palloc(VARHDRSZ + 32);
		SET_VARSIZE(b, VARHDRSZ + 32);
		memcpy(VARDATA(b), s->sha, 32);
		models[k] = CStringGetTextDatum(s->model);
		variants[k] = CStringGetTextDatum(s->variant);
		shas[k] = PointerGetDatum(b);
		/* real[] as text: an array of arrays of any lengths is not a type */
		initStringInfo(&t);
		appendStringInfoChar(&t, '{');
		for (int d = 0; d < s->dims; d++)
			appendStringInfo(&t, "%s%.9g", d ? "," : "", (double) s->vector[d]);
		appendStringInfoChar(&t, '}');
		vecs[k] = CStringGetTextDatum(t.data);
		toks[k] = Int32GetDatum((int32) Min(s->tokens, PG_INT32_MAX));
		k++;
	}
	if (k == 0)
		return;
	values[0] = CStringGetTextDatum(maester_current_tenant());
	values[1] = Int32GetDatum(st->opts.gen.dimensions);
	values[2] = PointerGetDatum(construct_array(models, k, TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(shas, k, BYTEAOID, -1, false, TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_array(vecs, k, TEXTOID, -1, false, TYPALIGN_INT));
	values[5] = PointerGetDatum(construct_array(toks, k, INT4OID, 4, true, TYPALIGN_INT));
	values[6] = PointerGetDatum(construct_array(variants, k, TEXTOID, -1, false, TYPALIGN_INT));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	maester_become_owner(maester_table_oid("embedding_cache"), &scope);
	if (SPI_execute_with_args("INSERT INTO maester.embedding_cache AS c "
							  "(tenant, model, dimensions, variant, input_sha256, embedding, input_tokens) "
							  "SELECT $1, m, $2, v, h, e::pg_catalog.float4[], t "
							  "FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4), "
							  "pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7)) "
							  "AS u(m, h, e, t, v) "
							  "ON CONFLICT DO NOTHING",
							  7, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write maester.embedding_cache");
	maester_restore_user(&scope);
	SPI_finish();
}

/*
 * options.cache: what the cache answered is a ledger row of status cached
 * at $0, its estimated_cost_usd what it would have cost; what the provider
 * answered is kept for next time
 */
static void
cache_record(EmbedState *st)
{
	int64		tokens = 0;
	int			hits = 0;
	int			fresh = 0;

	for (int i = 0; i < st->ninputs; i++)
	{
		if (st->slots[i].cached)
		{
			tokens += st->slots[i].tokens;
			hits++;
		}
		else if (st->slots[i].vector)
			fresh++;
	}
	if (hits > 0)
	{
		LedgerRecord *r = palloc0(sizeof(LedgerRecord));
		LedgerSlot *slot = ledger_attach();
		const char *names[2] = {st->first->model, st->first->name};
		bool		priced;
		Numeric		would;
		uint8		t[16];

		r->kind = LEDGER_PENDING;
		if (!pg_strong_random(r->request_id.data, UUID_LEN) || !pg_strong_random(t, sizeof(t)))
			elog(ERROR, "could not generate random values");
		r->request_id.data[6] = (r->request_id.data[6] & 0x0f) | 0x40;
		r->request_id.data[8] = (r->request_id.data[8] & 0x3f) | 0x80;
		hex_encode((char *) t, sizeof(t), r->trace_id);
		r->attempt = 1;
		r->ts = r->settled_at = GetCurrentTimestamp();
		ledger_copy_name(r->tenant, maester_current_tenant(), sizeof(r->tenant));
		ledger_copy_name(r->role, GetUserNameFromId(GetUserId(), false), sizeof(r->role));
		memset(r->prompt_hash, '0', 64);
		ledger_copy_name(r->provider, st->first->provider->name, sizeof(r->provider));
		ledger_copy_name(r->requested_model, st->model, sizeof(r->requested_model));
		ledger_copy_name(r->model, st->first->model, sizeof(r->model));
		ledger_copy_name(r->model_name, st->first->name, sizeof(r->model_name));
		strlcpy(r->status, "cached", sizeof(r->status));
		strlcpy(r->purpose, "embedding", sizeof(r->purpose));
		if (st->opts.tags)
			strlcpy(r->tags, st->opts.tags, sizeof(r->tags));
		would = maester_cost(names, 2, tokens, 0, 0, 0, 0, r->ts, &priced);
		if (would)
			strlcpy(r->estimate, DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(would))),
					sizeof(r->estimate));
		strlcpy(r->cost, "0", sizeof(r->cost));
		r->priced = priced;
		(void) ledger_enqueue(slot, r);
		r->kind = LEDGER_SETTLE;
		r->has_usage = true;
		r->input_tokens = tokens;
		(void) ledger_enqueue(slot, r);
	}
	/* a cache that cannot be written (a read-only transaction) loses nothing billed */
	if (fresh > 0)
	{
		ErrorData  *edata = maester_subxact(cache_store_fn, st, CurrentMemoryContext);

		if (edata != NULL)
		{
			if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
				edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
				ReThrowError(edata);
			ereport(WARNING,
					(errmsg("the embeddings were not kept in the cache: %s", edata->message)));
		}
	}
}

/* Embed `inputs` (NULL entries allowed: they fail alone) into st->slots */
static void
embed_run(EmbedState *st, int concurrency)
{
	int64		limit = batch_tokens(st);
	int		   *cur = palloc(sizeof(int) * Min(st->ninputs, EMBED_MAX_BATCH_INPUTS) + sizeof(int));
	int			ncur = 0;
	int64		tokens = 0;

	if (st->cache)
		cache_lookup(st);

	for (int i = 0; i < st->ninputs; i++)
	{
		int64		t;

		if (st->inputs[i] == NULL)
		{
			slot_fail_with(st, i, ERRCODE_NULL_VALUE_NOT_ALLOWED, "invalid_request",
						   psprintf("input %d is NULL", i + 1));
			continue;
		}
		if (st->inputs[i][0] == '\0')
		{
			slot_fail_with(st, i, ERRCODE_INVALID_PARAMETER_VALUE, "invalid_request",
						   psprintf("input %d is empty", i + 1));
			continue;
		}
		if (st->slots[i].cached)
			continue;			/* the cache answered it */
		/* worst case: a token per byte of UTF-8 (in any server encoding), and a couple more */
		t = maester_utf8_length(st->inputs[i]) + 2;
		/*
		 * An input that may be over the model's limit goes alone: if the
		 * provider refuses it, no other input waits for the split
		 */
		if (st->max_input_tokens > 0 && t > st->max_input_tokens)
		{
			st->queue = lappend(st->queue, batch_of(st, &i, 1));
			continue;
		}
		if (ncur > 0 && (ncur == EMBED_MAX_BATCH_INPUTS || tokens + t > limit))
		{
			st->queue = lappend(st->queue, batch_of(st, cur, ncur));
			ncur = 0;
			tokens = 0;
		}
		cur[ncur++] = i;
		tokens += t;
	}
	if (ncur > 0)
		st->queue = lappend(st->queue, batch_of(st, cur, ncur));
	/* again while refused requests left halves to send (embed_done) */
	while (st->queue != NIL)
	{
		CallDriver	d = {.next = embed_next, .done = embed_done, .arg = st,
			.concurrency = concurrency, .isolation = CALLS_SUBXACT};

		run_calls(&d);
	}
	/* (nothing is held once the probe has answered, which it always does) */
	Assert(st->held == NIL);
	if (st->cache)
		cache_record(st);
}

/* Set up the state for `inputs` (in the server encoding) */
static void
embed_begin(EmbedState *st, char **inputs, int n, text *model, Jsonb *options,
			int *concurrency)
{
	memset(st, 0, sizeof(*st));
	st->cxt = AllocSetContextCreate(CurrentMemoryContext, "maester embed",
									ALLOCSET_DEFAULT_SIZES);
	st->inputs = inputs;
	st->ninputs = n;
	st->slots = palloc0(sizeof(EmbedSlot) * Max(n, 1));
	st->model = model ? text_to_cstring(model) : NULL;
	embed_parse_options(options, st, concurrency);
}

/* An input's vector as real[] */
static Datum
vector_datum(EmbedSlot *s)
{
	Datum	   *elems = palloc(sizeof(Datum) * s->dims);

	for (int d = 0; d < s->dims; d++)
		elems[d] = Float4GetDatum(s->vector[d]);
	return PointerGetDatum(construct_array(elems, s->dims, FLOAT4OID, sizeof(float4),
										   true, TYPALIGN_INT));
}

PG_FUNCTION_INFO_V1(embed_many);
/*
 * maester.embed(input text[], model text DEFAULT NULL, options jsonb
 *				 DEFAULT '{}') RETURNS SETOF maester.embedding_result
 */
Datum
embed_many(PG_FUNCTION_ARGS)
{
	EmbedState	st;
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	char	  **inputs;
	int			concurrency;
	ReturnSetInfo *rsinfo;

	maester_check_catalog();
	maester_require_preload();
	(void) maester_current_tenant();
	InitMaterializedSRF(fcinfo, 0);
	rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	if (rsinfo->setDesc->natts != EMBED_RESULT_NATTS)
		elog(ERROR, "maester.embedding_result has %d attributes, not %d",
			 rsinfo->setDesc->natts, EMBED_RESULT_NATTS);
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("input must be a one-dimensional array")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	inputs = palloc(sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
		inputs[i] = nulls[i] ? NULL : TextDatumGetCString(elems[i]);
	embed_begin(&st, inputs, n, PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1),
				PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2), &concurrency);
	embed_run(&st, concurrency);

	for (int i = 0; i < n; i++)
	{
		EmbedSlot  *s = &st.slots[i];
		Datum		v[EMBED_RESULT_NATTS];
		bool		vn[EMBED_RESULT_NATTS];

		memset(vn, true, sizeof(vn));
		v[0] = Int32GetDatum(i + 1);
		vn[0] = false;
		if (s->vector)
		{
			v[1] = vector_datum(s);
			v[2] = Int32GetDatum((int32) Min(s->tokens, PG_INT32_MAX));
			v[3] = CStringGetTextDatum(s->model);
			vn[1] = vn[2] = vn[3] = false;
		}
		else
		{
			v[4] = CStringGetTextDatum(unpack_sql_state(s->sqlstate ? s->sqlstate : ERRCODE_INTERNAL_ERROR));
			v[5] = CStringGetTextDatum(s->error_class ? s->error_class : "error");
			v[6] = CStringGetTextDatum(s->message ? s->message : "no answer");
			vn[4] = vn[5] = vn[6] = false;
			if (s->detail)
			{
				v[7] = CStringGetTextDatum(s->detail);
				vn[7] = false;
			}
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, vn);
		/* the row is in the tuplestore (on disk past work_mem): free its copies */
		for (int k = 1; k < EMBED_RESULT_NATTS; k++)
			if (!vn[k] && k != 2)
				pfree(DatumGetPointer(v[k]));
		if (s->vector)
			pfree(s->vector);
		s->vector = NULL;
	}
	MemoryContextDelete(st.cxt);
	PG_RETURN_NULL();
}

PG_FUNCTION_INFO_V1(embed_one);
/*
 * maester.embed(input text, model text DEFAULT NULL, options jsonb
 *				 DEFAULT '{}') RETURNS real[]: raises the call's error
 */
Datum
embed_one(PG_FUNCTION_ARGS)
{
	EmbedState	st;
	char	   *input;
	int			concurrency;
	EmbedSlot  *s;
	Datum		result;

	maester_check_catalog();
	maester_require_preload();
	(void) maester_current_tenant();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("input must not be null")));
	input = text_to_cstring(PG_GETARG_TEXT_PP(0));
	embed_begin(&st, &input, 1, PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1),
				PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2), &concurrency);
	embed_run(&st, 1);
	s = &st.slots[0];
	if (s->vector == NULL)
		ereport(ERROR,
				(errcode(s->sqlstate ? s->sqlstate : ERRCODE_INTERNAL_ERROR),
				 errmsg_internal("%s", s->message ? s->message : "no answer"),
				 s->detail ? errdetail_internal("%s", s->detail) : 0));
	result = vector_datum(s);
	MemoryContextDelete(st.cxt);
	PG_RETURN_DATUM(result);
}
