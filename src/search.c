/*-------------------------------------------------------------------------
 *
 * search.c
 *	  maester.search: hybrid retrieval over a knowledge base -- exact
 *	  nearest neighbours in C, full-text search, weighted reciprocal rank
 *	  fusion.
 *
 * The vector branch embeds the query (one maester.embed call, metered like
 * any other, with the profile's query prefix and input_type query), then
 * scans the active profile's live vectors of the knowledge base -- every
 * one, after the filters: exact search has perfect recall, also under a
 * selective metadata filter, where approximate indexes return fewer than
 * k rows.  The scan is an ordinary query run as the caller, so row-level
 * security applies; its rows go to a DestReceiver of ours that scores each
 * vector where it lies in the buffer (no copy: vectors are stored PLAIN),
 * with the SIMD kernels of vector_kernels.c, into a bounded heap of the
 * best candidates.  It can be cancelled.
 *
 * The full-text branch: websearch_to_tsquery (never an error on what a
 * user types) in the kb's configuration, ts_rank_cd over the GIN index,
 * with AND semantics; only when that finds fewer than k chunks, the same
 * words with OR (AND is ~40x cheaper on the manual: it ranks fewer rows).
 *
 * Hybrid: score = w_v / (rrf_k + rank_v) + w_f / (rrf_k + rank_f) over each
 * branch's top candidates (rrf_k 60), ties broken by chunk id.  Every hit
 * carries both ranks and raw scores, so a result can be explained.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "tcop/dest.h"
#include "tcop/pquery.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/portal.h"

#include "catalog.h"
#include "jsonutil.h"
#include "settings.h"
#include "vector_kernels.h"

#define SEARCH_MAX_K 1000
#define SEARCH_MAX_CANDIDATES 10000

/* One candidate of a branch */
typedef struct Candidate
{
	int64		chunk_id;
	double		score;
} Candidate;

/* A bounded min-heap of the best candidates (heap[0]: the worst kept) */
typedef struct TopK
{
	Candidate  *heap;
	int			n;
	int			cap;
} TopK;

static inline bool
worse(const Candidate *a, const Candidate *b)
{
	/* a ranks below b: lower score, or the same score and a higher id */
	return a->score < b->score || (a->score == b->score && a->chunk_id > b->chunk_id);
}

static void
topk_add(TopK *t, int64 chunk_id, double score)
{
	Candidate	c = {chunk_id, score};
	int			i;

	if (t->n < t->cap)
	{
		i = t->n++;
		while (i > 0 && worse(&c, &t->heap[(i - 1) / 2]))
		{
			t->heap[i] = t->heap[(i - 1) / 2];
			i = (i - 1) / 2;
		}
		t->heap[i] = c;
		return;
	}
	if (!worse(&t->heap[0], &c))
		return;
	/* replace the worst and sift down */
	i = 0;
	for (;;)
	{
		int			l = 2 * i + 1;
		int			r = l + 1;
		int			m = i;
		const Candidate *mc = &c;

		if (l < t->n && worse(&t->heap[l], mc))
		{
			m = l;
			mc = &t->heap[l];
		}
		if (r < t->n && worse(&t->heap[r], mc))
		{
			m = r;
			mc = &t->heap[r];
		}
		if (m == i)
			break;
		t->heap[i] = t->heap[m];
		i = m;
	}
	t->heap[i] = c;
}

static int
candidate_cmp(const void *a, const void *b)
{
	const Candidate *x = a;
	const Candidate *y = b;

	if (worse(x, y))
		return 1;
	if (worse(y, x))
		return -1;
	return 0;
}

/* Sorted best first */
static void
topk_sort(TopK *t)
{
	qsort(t->heap, t->n, sizeof(Candidate), candidate_cmp);
}

/* The DestReceiver of the vector scan: (chunk_id, embedding) rows */
typedef struct VectorReceiver
{
	DestReceiver pub;
	const float *query;
	int			dims;
	bool		cosine;			/* vectors not normalized: cosine, else the dot product */
	const VectorKernels *kernels;
	TopK		top;
	int64		scanned;
	int64		wrong_length;
} VectorReceiver;

static bool
vector_receive(TupleTableSlot *slot, DestReceiver *self)
{
	VectorReceiver *r = (VectorReceiver *) self;
	bool		isnull;
	Datum		id = slot_getattr(slot, 1, &isnull);
	Datum		v;
	ArrayType  *a;
	const float *x;
	double		score;

	if (isnull)
		return true;
	v = slot_getattr(slot, 2, &isnull);
	if (isnull)
		return true;
	if ((++r->scanned & 1023) == 0)
		CHECK_FOR_INTERRUPTS();
	a = DatumGetArrayTypeP(v);	/* PLAIN storage: no copy */
	if (ARR_NDIM(a) != 1 || ARR_HASNULL(a) || ARR_DIMS(a)[0] != r->dims)
	{
		r->wrong_length++;
		return true;
	}
	x = (const float *) ARR_DATA_PTR(a);
	if (r->cosine)
	{
		float		ab, aa, bb;

		r->kernels->dot3(r->query, x, r->dims, &ab, &aa, &bb);
		score = (aa > 0 && bb > 0) ? ab / sqrt((double) aa * bb) : 0;
	}
	else
		score = r->kernels->dot(r->query, x, r->dims);
	topk_add(&r->top, DatumGetInt64(id), score);
	if ((Pointer) a != DatumGetPointer(v))
		pfree(a);
	return true;
}

static void
vector_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
}

static void
vector_shutdown(DestReceiver *self)
{
}

static void
vector_destroy(DestReceiver *self)
{
}

/* Search options */
typedef struct SearchOptions
{
	double		vector_weight;
	double		fts_weight;
	int			rrf_k;
	int			candidates;
} SearchOptions;

static void
option_error(const char *key, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("search option \"%s\" must be %s", key, what)));
}

static SearchOptions
parse_options(Jsonb *opts, int k)
{
	SearchOptions o = {1.0, 1.0, 60, Max(4 * k, 50)};
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (opts == NULL)
		return o;
	if (!JB_ROOT_IS_OBJECT(opts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("search options must be a JSON object")));
	it = JsonbIteratorInit(&opts->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;
		double		d;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		tok = JsonbIteratorNext(&it, &v, true);
		if (v.type != jbvNumeric)
			option_error(key, "a number");
		d = DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(v.val.numeric)));
		if (strcmp(key, "vector_weight") == 0 || strcmp(key, "fts_weight") == 0)
		{
			if (!(d >= 0 && d <= 1000))
				option_error(key, "between 0 and 1000");
			if (key[0] == 'v')
				o.vector_weight = d;
			else
				o.fts_weight = d;
		}
		else if (strcmp(key, "rrf_k") == 0)
		{
			if (!(d >= 1 && d <= 100000) || d != floor(d))
				option_error(key, "an integer between 1 and 100000");
			o.rrf_k = (int) d;
		}
		else if (strcmp(key, "candidates") == 0)
		{
			if (!(d >= k && d <= SEARCH_MAX_CANDIDATES) || d != floor(d))
				option_error(key, psprintf("an integer between k (%d) and %d", k, SEARCH_MAX_CANDIDATES));
			o.candidates = (int) d;
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown search option \"%s\"", key),
					 errhint("Search options are vector_weight, fts_weight, rrf_k and candidates.")));
	}
	o.candidates = Min(Max(o.candidates, k), SEARCH_MAX_CANDIDATES);
	return o;
}

/* The knowledge base as the caller sees it */
typedef struct SearchKb
{
	int64		id;
	int64		profile_id;
	Oid			fts_config;
	char	   *model;
	char	   *dimensions;		/* NULL: the model's */
	char	   *query_prefix;
	char	   *served_model;	/* NULL: no vector yet */
	bool		normalize;
} SearchKb;

static SearchKb
find_kb(const char *name)
{
	SearchKb	kb;
	Oid			t[1] = {TEXTOID};
	Datum		v[1] = {CStringGetTextDatum(name)};
	HeapTuple	tup;
	TupleDesc	d;
	bool		isnull;

	if (SPI_execute_with_args("SELECT k.id, k.profile_id, k.fts_config::pg_catalog.oid, p.model, p.dimensions, "
							  "p.query_prefix, p.served_model, p.normalize "
							  "FROM maester.kb k JOIN maester.embedding_profile p ON p.id OPERATOR(pg_catalog.=) k.profile_id "
							  "WHERE k.tenant OPERATOR(pg_catalog.=) maester.current_tenant() "
							  "AND k.name OPERATOR(pg_catalog.=) $1", 1, t, v, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the knowledge base");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("knowledge base \"%s\" does not exist", name),
				 errhint("Knowledge bases are per tenant: see maester.kb, or create one with maester.kb_create.")));
	tup = SPI_tuptable->vals[0];
	d = SPI_tuptable->tupdesc;
	kb.id = DatumGetInt64(SPI_getbinval(tup, d, 1, &isnull));
	kb.profile_id = DatumGetInt64(SPI_getbinval(tup, d, 2, &isnull));
	kb.fts_config = DatumGetObjectId(SPI_getbinval(tup, d, 3, &isnull));
	kb.model = SPI_getvalue(tup, d, 4);
	kb.dimensions = SPI_getvalue(tup, d, 5);
	kb.query_prefix = SPI_getvalue(tup, d, 6);
	kb.served_model = SPI_getvalue(tup, d, 7);
	kb.normalize = DatumGetBool(SPI_getbinval(tup, d, 8, &isnull));
	return kb;
}

/* The query's vector: one maester.embed call */
static float *
embed_query(SearchKb *kb, const char *query, int *dims)
{
	Oid			t[3] = {TEXTOID, TEXTOID, JSONBOID};
	Datum		v[3];
	StringInfoData opts;
	HeapTuple	tup;
	TupleDesc	d;
	bool		isnull;
	Datum		vec;
	char	   *model;
	ArrayType  *a;
	float	   *q;

	initStringInfo(&opts);
	appendStringInfo(&opts, "{\"input_type\": \"query\", \"normalize\": %s%s%s}",
					 kb->normalize ? "true" : "false",
					 kb->dimensions ? ", \"dimensions\": " : "", kb->dimensions ? kb->dimensions : "");
	v[0] = CStringGetTextDatum(psprintf("%s%s", kb->query_prefix ? kb->query_prefix : "", query));
	v[1] = CStringGetTextDatum(kb->model);
	v[2] = DirectFunctionCall1(jsonb_in, CStringGetDatum(opts.data));
	if (SPI_execute_with_args("SELECT e.embedding, e.model, e.error_code, e.error_message "
							  "FROM maester.embed(ARRAY[$1], $2, $3) e", 3, t, v, NULL, false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not embed the query");
	tup = SPI_tuptable->vals[0];
	d = SPI_tuptable->tupdesc;
	vec = SPI_getbinval(tup, d, 1, &isnull);
	if (isnull)
	{
		char	   *code = SPI_getvalue(tup, d, 3);

		ereport(ERROR,
				(errcode(code && strlen(code) == 5 ? MAKE_SQLSTATE(code[0], code[1], code[2], code[3], code[4])
						 : ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("the query could not be embedded: %s", SPI_getvalue(tup, d, 4))));
	}
	model = SPI_getvalue(tup, d, 2);
	if (model && kb->served_model && strcmp(model, kb->served_model) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the query was embedded by %s, but the knowledge base's vectors come from %s", model,
						kb->served_model),
				 errdetail("Vectors of two models are not comparable (a fallback?)."),
				 errhint("Search again when %s answers, or search with mode => 'fts'.", kb->served_model)));
	a = DatumGetArrayTypePCopy(vec);
	*dims = ArrayGetNItems(ARR_NDIM(a), ARR_DIMS(a));
	q = palloc(*dims * sizeof(float));
	memcpy(q, ARR_DATA_PTR(a), *dims * sizeof(float));
	return q;
}

/* Vector branch: the best candidates, best first */
static TopK
vector_branch(SearchKb *kb, const char *query, Jsonb *filter, int candidates)
{
	VectorReceiver r;
	Oid			t[3] = {INT8OID, INT8OID, JSONBOID};
	Datum		v[3] = {Int64GetDatum(kb->id), Int64GetDatum(kb->profile_id), PointerGetDatum(filter)};
	SPIPlanPtr	plan;
	Portal		portal;
	const char *sql;

	memset(&r, 0, sizeof(r));
	r.top.cap = candidates;
	r.top.heap = palloc(candidates * sizeof(Candidate));
	if (kb->served_model == NULL)
		return r.top;			/* no vector yet */
	r.query = embed_query(kb, query, &r.dims);
	r.cosine = !kb->normalize;
	r.kernels = maester_kernels ? maester_kernels : vector_kernels();
	r.pub.receiveSlot = vector_receive;
	r.pub.rStartup = vector_startup;
	r.pub.rShutdown = vector_shutdown;
	r.pub.rDestroy = vector_destroy;
	r.pub.mydest = DestNone;

	if (filter)
		sql = "SELECT e.chunk_id, e.embedding FROM maester.chunk_embedding e "
			"WHERE e.kb_id OPERATOR(pg_catalog.=) $1 AND e.profile_id OPERATOR(pg_catalog.=) $2 AND e.live "
			"AND e.document_id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT d.id FROM maester.document d "
			"WHERE d.kb_id OPERATOR(pg_catalog.=) $1 AND d.current "
			"AND d.metadata OPERATOR(pg_catalog.@>) $3))";
	else
		sql = "SELECT e.chunk_id, e.embedding FROM maester.chunk_embedding e "
			"WHERE e.kb_id OPERATOR(pg_catalog.=) $1 AND e.profile_id OPERATOR(pg_catalog.=) $2 AND e.live "
			"AND $3 IS NULL";
	plan = SPI_prepare(sql, 3, t);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	portal = SPI_cursor_open(NULL, plan, v, filter ? NULL : "  n", true);
	(void) PortalRunFetch(portal, FETCH_FORWARD, FETCH_ALL, (DestReceiver *) &r);
	SPI_cursor_close(portal);
	SPI_freeplan(plan);
	topk_sort(&r.top);
	return r.top;
}

/* Full-text branch: AND semantics, then OR when AND finds fewer than k */
static TopK
fts_branch(SearchKb *kb, const char *query, Jsonb *filter, int k, int candidates)
{
	TopK		top;
	Oid			t[5] = {INT8OID, OIDOID, TEXTOID, JSONBOID, INT4OID};
	Datum		v[5] = {Int64GetDatum(kb->id), ObjectIdGetDatum(kb->fts_config), CStringGetTextDatum(query),
	PointerGetDatum(filter), Int32GetDatum(candidates)};
	char		n[5] = {' ', ' ', ' ', filter ? ' ' : 'n', ' '};

	top.cap = candidates;
	top.n = 0;
	top.heap = palloc(candidates * sizeof(Candidate));
	for (int pass = 0; pass < 2; pass++)
	{
		const char *q = pass == 0
			? "pg_catalog.websearch_to_tsquery($2::pg_catalog.regconfig, $3)"
			: "(SELECT CASE WHEN pg_catalog.strpos(w::text, '!') OPERATOR(pg_catalog.>) 0 THEN w "
			"ELSE pg_catalog.replace(w::text, ' & ', ' | ')::pg_catalog.tsquery END "
			"FROM pg_catalog.websearch_to_tsquery($2::pg_catalog.regconfig, $3) w)";
		char	   *sql = psprintf("SELECT c.id, pg_catalog.ts_rank_cd(c.tsv, q.q) AS r "
								   "FROM (SELECT %s AS q) q, maester.chunk c "
								   "JOIN maester.document d ON d.id OPERATOR(pg_catalog.=) c.document_id "
								   "WHERE c.kb_id OPERATOR(pg_catalog.=) $1 AND d.current "
								   "AND c.tsv OPERATOR(pg_catalog.@@) q.q "
								   "AND ($4 IS NULL OR d.metadata OPERATOR(pg_catalog.@>) $4) "
								   "ORDER BY r DESC, c.id LIMIT $5", q);

		if (SPI_execute_with_args(sql, 5, t, v, n, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not run the full-text search");
		top.n = 0;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;

			top.heap[top.n].chunk_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
			top.heap[top.n].score = DatumGetFloat4(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
			top.n++;
		}
		if (top.n >= k)
			break;
	}
	return top;
}

/* A fused hit */
typedef struct Hit
{
	int64		chunk_id;
	double		score;
	int			vrank;			/* 0: not in the branch */
	double		vscore;
	int			frank;
	double		fscore;
} Hit;

static int
hit_cmp(const void *a, const void *b)
{
	const Hit  *x = a;
	const Hit  *y = b;

	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return x->chunk_id < y->chunk_id ? -1 : x->chunk_id > y->chunk_id ? 1 : 0;
}

static Hit *
find_hit(Hit *hits, int n, int64 id)
{
	for (int i = 0; i < n; i++)
		if (hits[i].chunk_id == id)
			return &hits[i];
	return NULL;
}

PG_FUNCTION_INFO_V1(kb_search);
/*
 * maester.search(kb text, query text, k int, mode text, filter jsonb,
 *				  options jsonb) RETURNS SETOF maester.search_hit
 */
Datum
kb_search(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name;
	char	   *query;
	int			k;
	char	   *mode;
	Jsonb	   *filter = PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4);
	Jsonb	   *opts = PG_ARGISNULL(5) ? NULL : PG_GETARG_JSONB_P(5);
	SearchOptions o;
	SearchKb	kb;
	TopK		vtop = {0};
	TopK		ftop = {0};
	Hit		   *hits;
	int			nhits = 0;
	bool		use_vector;
	bool		use_fts;

	maester_check_catalog();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("search needs a knowledge base and a query")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	query = text_to_cstring(PG_GETARG_TEXT_PP(1));
	k = PG_ARGISNULL(2) ? 10 : PG_GETARG_INT32(2);
	mode = PG_ARGISNULL(3) ? "hybrid" : text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (k < 1 || k > SEARCH_MAX_K)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("k must be between 1 and %d, not %d", SEARCH_MAX_K, k)));
	use_vector = strcmp(mode, "vector") == 0 || strcmp(mode, "hybrid") == 0;
	use_fts = strcmp(mode, "fts") == 0 || strcmp(mode, "hybrid") == 0;
	if (!use_vector && !use_fts)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("search mode must be vector, fts or hybrid, not \"%s\"", mode)));
	if (filter && !JB_ROOT_IS_OBJECT(filter))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a search filter must be a JSON object (the documents' metadata contains it)")));
	if (strspn(query, " \t\r\n") == strlen(query))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the search query is empty")));
	o = parse_options(opts, k);

	InitMaterializedSRF(fcinfo, 0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	kb = find_kb(name);
	if (use_vector && o.vector_weight > 0)
		vtop = vector_branch(&kb, query, filter, o.candidates);
	if (use_fts && o.fts_weight > 0)
		ftop = fts_branch(&kb, query, filter, k, o.candidates);

	/* fuse */
	hits = palloc0((vtop.n + ftop.n + 1) * sizeof(Hit));
	for (int i = 0; i < vtop.n; i++)
	{
		Hit		   *h = &hits[nhits++];

		h->chunk_id = vtop.heap[i].chunk_id;
		h->vrank = i + 1;
		h->vscore = vtop.heap[i].score;
		h->score = o.vector_weight / (o.rrf_k + i + 1);
	}
	for (int i = 0; i < ftop.n; i++)
	{
		Hit		   *h = find_hit(hits, vtop.n, ftop.heap[i].chunk_id);

		if (h == NULL)
		{
			h = &hits[nhits++];
			h->chunk_id = ftop.heap[i].chunk_id;
		}
		h->frank = i + 1;
		h->fscore = ftop.heap[i].score;
		h->score += o.fts_weight / (o.rrf_k + i + 1);
	}
	qsort(hits, nhits, sizeof(Hit), hit_cmp);
	nhits = Min(nhits, k);

	/* the hits' passages and documents, in fused order */
	if (nhits > 0)
	{
		Datum	   *ids = palloc(nhits * sizeof(Datum));
		Oid			t[4] = {INT8ARRAYOID, OIDOID, TEXTOID, BOOLOID};
		Datum		v[4];

		for (int i = 0; i < nhits; i++)
			ids[i] = Int64GetDatum(hits[i].chunk_id);
		v[0] = PointerGetDatum(construct_array(ids, nhits, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		v[1] = ObjectIdGetDatum(kb.fts_config);
		v[2] = CStringGetTextDatum(query);
		v[3] = BoolGetDatum(use_fts);
		if (SPI_execute_with_args("SELECT c.id, d.id, d.version, d.external_id, d.title, c.heading_path, "
								  "c.start_offset, c.end_offset, "
								  "CASE WHEN $4 AND c.tsv OPERATOR(pg_catalog.@@) "
								  "pg_catalog.websearch_to_tsquery($2::pg_catalog.regconfig, $3) "
								  "THEN pg_catalog.ts_headline($2::pg_catalog.regconfig, c.content, "
								  "pg_catalog.websearch_to_tsquery($2::pg_catalog.regconfig, $3), "
								  "'MaxFragments=2, MaxWords=24, MinWords=8, FragmentDelimiter=\" ... \"') "
								  "ELSE pg_catalog.left(c.content, 200) END, "
								  "d.metadata, c.content "
								  "FROM maester.chunk c JOIN maester.document d ON d.id OPERATOR(pg_catalog.=) c.document_id "
								  "WHERE c.id OPERATOR(pg_catalog.=) ANY ($1)",
								  4, t, v, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the hits");
		for (int i = 0; i < nhits; i++)
		{
			for (uint64 r = 0; r < SPI_processed; r++)
			{
				HeapTuple	tup = SPI_tuptable->vals[r];
				TupleDesc	d = SPI_tuptable->tupdesc;
				bool		isnull;
				Datum		values[17];
				bool		nulls[17];

				if (DatumGetInt64(SPI_getbinval(tup, d, 1, &isnull)) != hits[i].chunk_id)
					continue;
				memset(nulls, 0, sizeof(nulls));
				values[0] = Int32GetDatum(i + 1);
				for (int c = 0; c < 8; c++)
					values[c + 1] = SPI_getbinval(tup, d, c + 1, &nulls[c + 1]);
				values[9] = SPI_getbinval(tup, d, 9, &nulls[9]);
				values[10] = Float8GetDatum(hits[i].score);
				values[11] = Int32GetDatum(hits[i].vrank);
				nulls[11] = hits[i].vrank == 0;
				values[12] = Float8GetDatum(hits[i].vscore);
				nulls[12] = hits[i].vrank == 0;
				values[13] = Int32GetDatum(hits[i].frank);
				nulls[13] = hits[i].frank == 0;
				values[14] = Float8GetDatum(hits[i].fscore);
				nulls[14] = hits[i].frank == 0;
				values[15] = SPI_getbinval(tup, d, 10, &nulls[15]);
				values[16] = SPI_getbinval(tup, d, 11, &nulls[16]);
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
				break;
			}
		}
	}
	SPI_finish();
	return (Datum) 0;
}
