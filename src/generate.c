/*-------------------------------------------------------------------------
 *
 * generate.c
 *	  The SQL entry points of the gateway: llm_generate, generate_batch,
 *	  complete, and evaluate (whose llm_rubric checks are calls).
 *
 * Each is a driver of the call machine (machine.c): llm_generate a batch
 * of one whose errors are the statement's; generate_batch many, each move
 * of each call in a subtransaction so that one request's error is that
 * request's row; complete the articles' request and response JSON around
 * one call; evaluate the checks on a text, with a batch of grading calls
 * when they ask for a model's verdict.  Results are maester.generation and
 * maester.batch_result tuples, filled with exactly the attributes this
 * library's catalog version has (catalog.c checks the version first; the
 * count is checked too, as pg_stat_statements does).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"

#include "call.h"
#include "catalog.h"
#include "evaluate.h"
#include "request.h"
#include "tenant.h"
#include "util.h"

/* The result descriptor of a function returning maester.generation */
static TupleDesc
generation_tupdesc(FunctionCallInfo fcinfo, int natts)
{
	TupleDesc	tupdesc;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts != natts)
		elog(ERROR, "maester.generation has %d attributes, not %d", tupdesc->natts, natts);
	return BlessTupleDesc(tupdesc);
}

/* llm_generate's one call */
typedef struct SingleCall
{
	Call	   *call;
	bool		taken;
	Call	   *result;
} SingleCall;

static Call *
single_next(void *arg)
{
	SingleCall *s = (SingleCall *) arg;

	if (s->taken)
		return NULL;
	s->taken = true;
	return s->call;
}

static void
single_done(Call *c, void *arg)
{
	((SingleCall *) arg)->result = c;
}

/*
 * One call with these arguments, as a batch of one whose failure is the
 * caller's error; the call that succeeded, finished.
 */
static Call *
run_single(CallArgs *a)
{
	SingleCall	s;
	CallDriver	d = {.next = single_next, .done = single_done, .arg = &s,
	.concurrency = 1, .isolation = CALLS_SHARED};

	memset(&s, 0, sizeof(s));
	s.call = call_prepare(a, 1, CurrentMemoryContext, NULL);
	run_calls(&d);
	if (s.result->phase == PHASE_FAILED)
		call_raise(s.result);
	call_succeeded_finish(s.result);
	return s.result;
}

PG_FUNCTION_INFO_V1(llm_generate);
/*
 * maester.llm_generate(prompt text, model text, max_tokens int, system text,
 *						prompt_name text, variables jsonb,
 *						prompt_version text, options jsonb, messages jsonb)
 *	 RETURNS maester.generation
 */
Datum
llm_generate(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	CallArgs	a;
	Call	   *c;
	Datum		values[CALL_GENERATION_NATTS];
	bool		nulls[CALL_GENERATION_NATTS];

	maester_check_catalog();
	maester_require_preload();

	memset(&a, 0, sizeof(a));
	a.prompt = PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0);
	a.model = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (!PG_ARGISNULL(2))
	{
		a.max_tokens = PG_GETARG_INT32(2);
		if (a.max_tokens <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_tokens must be positive")));
	}
	a.system = PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3);
	a.prompt_name = PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4));
	a.variables = PG_ARGISNULL(5) ? NULL : PG_GETARG_JSONB_P(5);
	a.prompt_version = PG_ARGISNULL(6) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(6));
	a.options = PG_ARGISNULL(7) ? NULL : PG_GETARG_JSONB_P(7);
	a.messages = PG_ARGISNULL(8) ? NULL : PG_GETARG_JSONB_P(8);
	if (a.messages && (!JB_ROOT_IS_ARRAY(a.messages) || JB_ROOT_IS_SCALAR(a.messages)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("messages must be a JSON array of messages")));

	tupdesc = generation_tupdesc(fcinfo, CALL_GENERATION_NATTS);
	c = run_single(&a);
	(void) call_generation_values(c, values, nulls);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* generate_batch's state */
typedef struct BatchState
{
	Datum	   *requests;
	bool	   *request_nulls;
	int			nrequests;
	int			next;
	text	   *model;			/* defaults for requests that give none */
	text	   *prompt_name;
	Jsonb	   *options;
	bool		fail_fast;
	int			nfailed;		/* requests that failed */
	char		first_sqlstate[6];	/* the first failure's SQLSTATE */
	MemoryContext cxt;			/* parent of the calls' contexts */
	ReturnSetInfo *rsinfo;
} BatchState;

/* What batch_prepare_fn needs, and what it makes */
typedef struct BatchPrep
{
	BatchState *b;
	int			i;
	MemoryContext cxt;
	Call	   *c;
} BatchPrep;

static void
batch_prepare_fn(void *arg)
{
	BatchPrep  *bp = (BatchPrep *) arg;
	MemoryContext old = MemoryContextSwitchTo(bp->cxt);
	BatchState *b = bp->b;
	CallArgs	a;

	if (b->request_nulls[bp->i])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("request %d is NULL", bp->i + 1)));
	request_with_defaults(DatumGetJsonbP(b->requests[bp->i]), b->model, b->prompt_name,
						  b->options, &a);
	bp->c = call_prepare(&a, bp->i + 1, bp->cxt, NULL);
	MemoryContextSwitchTo(old);
}

/*
 * The next request of the batch, prepared in a subtransaction: a request
 * that cannot be prepared (a bad member, an unknown prompt, a missing
 * variable, a model nobody serves) is a FAILED call, not the batch's error.
 */
static Call *
batch_next(void *arg)
{
	BatchState *b = (BatchState *) arg;
	BatchPrep	bp;
	ErrorData  *edata;

	if (b->next >= b->nrequests)
		return NULL;
	bp.b = b;
	bp.i = b->next++;
	bp.cxt = AllocSetContextCreate(b->cxt, "maester call", ALLOCSET_DEFAULT_SIZES);
	bp.c = NULL;
	edata = maester_subxact(batch_prepare_fn, &bp, bp.cxt);
	if (edata == NULL)
		return bp.c;
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
		ReThrowError(edata);
	return call_from_error(bp.i + 1, bp.cxt, edata);
}

/*
 * A request of the batch succeeded and is in the ledger: a failure to
 * record it afterwards (the capture's INSERT, say) is a WARNING, not the
 * batch's error.
 */
static void
batch_finish_success(Call *c)
{
	ErrorData  *edata = call_finish_isolated(c);

	if (edata != NULL)
		ereport(WARNING,
				(errmsg("request %d of the batch succeeded, but recording it failed: %s",
						c->ordinal, edata->message)));
}

/* A finished call of the batch: its row; then its memory goes */
static void
batch_done(Call *c, void *arg)
{
	BatchState *b = (BatchState *) arg;
	Datum		values[CALL_GENERATION_NATTS + 5];
	bool		nulls[CALL_GENERATION_NATTS + 5];
	Datum		g[CALL_GENERATION_NATTS];
	bool		gnulls[CALL_GENERATION_NATTS];
	const int	err = CALL_GENERATION_NATTS_0_1 + 1;	/* first error field */
	MemoryContext old = MemoryContextSwitchTo(c->cxt);

	if (c->phase == PHASE_FAILED && b->fail_fast)
		ereport(ERROR,
				(errcode(c->sqlstate),
				 errmsg("request %d of the batch failed: %s", c->ordinal, c->message),
				 c->detail ? errdetail_internal("%s", c->detail) : 0,
				 c->hint ? errhint("%s", c->hint) : 0,
				 errcontext("maester.generate_batch with fail_fast")));

	/*
	 * ordinal, 0.1.0's generation fields, the error fields, then the
	 * generation fields added since (maester.batch_result)
	 */
	memset(nulls, 0, sizeof(nulls));
	values[0] = Int32GetDatum(c->ordinal);
	if (c->phase == PHASE_DONE)
		batch_finish_success(c);
	if (!call_generation_values(c, g, gnulls))
		memset(gnulls, true, sizeof(gnulls));
	for (int k = 0; k < CALL_GENERATION_NATTS; k++)
	{
		int			at = k < CALL_GENERATION_NATTS_0_1 ? 1 + k : err + 4 + (k - CALL_GENERATION_NATTS_0_1);

		values[at] = g[k];
		nulls[at] = gnulls[k];
	}
	if (c->phase == PHASE_FAILED)
	{
		if (b->nfailed++ == 0)
			strlcpy(b->first_sqlstate, unpack_sql_state(c->sqlstate), sizeof(b->first_sqlstate));
		values[err] = CStringGetTextDatum(unpack_sql_state(c->sqlstate));
		values[err + 1] = CStringGetTextDatum(c->error_class ? c->error_class : "error");
		values[err + 2] = CStringGetTextDatum(c->message ? c->message : "");
		if (c->detail)
			values[err + 3] = CStringGetTextDatum(c->detail);
		else
			nulls[err + 3] = true;
	}
	else
		for (int k = err; k < err + 4; k++)
			nulls[k] = true;
	tuplestore_putvalues(b->rsinfo->setResult, b->rsinfo->setDesc, values, nulls);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(c->cxt);
}

PG_FUNCTION_INFO_V1(generate_batch);
/*
 * maester.generate_batch(requests jsonb[], concurrency int, model text,
 *						  prompt_name text, options jsonb, fail_fast bool)
 *	 RETURNS SETOF maester.batch_result
 *
 * Runs the requests concurrently (at most `concurrency` in flight) through
 * the call machine, one row per request in the order they finish.  Rows go
 * to a tuplestore (spilled to disk past work_mem) and each call's memory
 * is freed when its row is written, so memory stays bounded whatever the
 * number of requests.
 */
Datum
generate_batch(PG_FUNCTION_ARGS)
{
	BatchState	b;
	int			concurrency;
	ArrayType  *arr;

	maester_check_catalog();
	maester_require_preload();
	/* who the batch is for is the statement's error, not every request's */
	(void) maester_current_tenant();
	InitMaterializedSRF(fcinfo, 0);
	if (((ReturnSetInfo *) fcinfo->resultinfo)->setDesc->natts != CALL_GENERATION_NATTS + 5)
		elog(ERROR, "maester.batch_result has %d attributes, not %d",
			 ((ReturnSetInfo *) fcinfo->resultinfo)->setDesc->natts, CALL_GENERATION_NATTS + 5);

	concurrency = PG_ARGISNULL(1) ? 16 : PG_GETARG_INT32(1);
	if (concurrency < 1 || concurrency > MAESTER_MAX_CONCURRENCY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("concurrency must be between 1 and %d", MAESTER_MAX_CONCURRENCY)));
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("requests must be a one-dimensional array")));

	memset(&b, 0, sizeof(b));
	deconstruct_array(arr, JSONBOID, -1, false, TYPALIGN_INT,
					  &b.requests, &b.request_nulls, &b.nrequests);
	b.model = PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2);
	b.prompt_name = PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3);
	b.options = PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4);
	b.fail_fast = PG_ARGISNULL(5) ? false : PG_GETARG_BOOL(5);
	b.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	b.cxt = AllocSetContextCreate(CurrentMemoryContext, "maester batch",
								  ALLOCSET_DEFAULT_SIZES);
	if (b.options && !JB_ROOT_IS_OBJECT(b.options))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("options must be a JSON object")));

	{
		CallDriver	d = {.next = batch_next, .done = batch_done, .arg = &b,
			.concurrency = Min(concurrency, Max(b.nrequests, 1)),
		.isolation = CALLS_SUBXACT};

		run_calls(&d);
	}
	MemoryContextDelete(b.cxt);
	/* a batch in which nothing succeeded is easy to miss in its rows */
	if (b.nrequests > 0 && b.nfailed == b.nrequests)
		ereport(NOTICE,
				(errmsg("all %d requests of the batch failed", b.nrequests),
				 errdetail("The first failed with SQLSTATE %s; each row's error_code and error_message say why.",
						   b.first_sqlstate)));
	PG_RETURN_NULL();
}

PG_FUNCTION_INFO_V1(complete);
/*
 * maester.complete(request jsonb) RETURNS jsonb: the articles' API in one
 * call.  The request is an object with llm_generate's argument names,
 * parsed like generate_batch's (request.c); the answer is {provider,
 * model, trace_id, prompt_name, prompt_version, prompt_hash, content,
 * cost, evaluation}, cost in the shape of maester.cost_of, and tool_calls,
 * parsed and refusal when the answer has them.
 */
Datum
complete(PG_FUNCTION_ARGS)
{
	Jsonb	   *request = PG_GETARG_JSONB_P(0);
	CallArgs	a;
	bool		has_model;
	Call	   *c;
	Generation *g;
	Datum		v[16];
	char		n[16];
	Oid			t[16] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	BOOLOID, INT8OID, INT8OID, INT8OID, INT8OID, JSONBOID, TEXTOID, JSONBOID, TEXTOID};
	Jsonb	   *result;

	maester_check_catalog();
	maester_require_preload();
	request_parse(request, &a, &has_model);
	if (a.options == NULL)		/* (what a capture keeps, as before) */
		a.options = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	c = run_single(&a);
	g = &c->g;

	memset(n, ' ', sizeof(n));
	v[0] = CStringGetTextDatum(g->provider);
	v[1] = CStringGetTextDatum(g->model);
	v[2] = CStringGetTextDatum(g->trace_id);
	v[3] = g->prompt_name ? CStringGetTextDatum(g->prompt_name) : (Datum) 0;
	n[3] = g->prompt_name ? ' ' : 'n';
	v[4] = g->prompt_version ? CStringGetTextDatum(g->prompt_version) : (Datum) 0;
	n[4] = g->prompt_version ? ' ' : 'n';
	v[5] = CStringGetTextDatum(g->prompt_hash);
	v[6] = CStringGetTextDatum(g->resp.content);
	v[7] = BoolGetDatum(g->priced);
	v[8] = Int64GetDatum(g->resp.input_tokens);
	v[9] = Int64GetDatum(g->resp.output_tokens);
	v[10] = Int64GetDatum(g->resp.cached_input_tokens);
	v[11] = Int64GetDatum(g->resp.cache_write_tokens);
	v[12] = g->evaluation ? JsonbPGetDatum(g->evaluation) : (Datum) 0;
	n[12] = g->evaluation ? ' ' : 'n';
	v[13] = g->resp.tool_calls ? CStringGetTextDatum(g->resp.tool_calls) : (Datum) 0;
	n[13] = g->resp.tool_calls ? ' ' : 'n';
	v[14] = g->resp.parsed ? JsonbPGetDatum(g->resp.parsed) : (Datum) 0;
	n[14] = g->resp.parsed ? ' ' : 'n';
	v[15] = g->resp.refusal ? CStringGetTextDatum(g->resp.refusal) : (Datum) 0;
	n[15] = g->resp.refusal ? ' ' : 'n';
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(
		"SELECT pg_catalog.jsonb_build_object("
		"  'provider', $1, 'model', $2, 'trace_id', $3, 'prompt_name', $4,"
		"  'prompt_version', $5, 'prompt_hash', $6, 'content', $7,"
		"  'cost', CASE WHEN $8 THEN"
		"    (SELECT pg_catalog.jsonb_build_object("
		"         'model', c.model, 'input_tokens', c.input_tokens,"
		"         'output_tokens', c.output_tokens, 'total_tokens', c.total_tokens,"
		"         'input_cost_usd', pg_catalog.to_char(c.input_cost_usd, 'FM0.000000'),"
		"         'output_cost_usd', pg_catalog.to_char(c.output_cost_usd, 'FM0.000000'),"
		"         'total_cost_usd', pg_catalog.to_char(c.total_cost_usd, 'FM0.000000'),"
		"         'unit', c.unit)"
		"       FROM maester.cost_of($2, $9, $10, $11, pg_catalog.now(), $12) c)"
		"  END,"
		"  'evaluation', $13) OPERATOR(pg_catalog.||) pg_catalog.jsonb_strip_nulls("
		"  pg_catalog.jsonb_build_object('tool_calls', $14::pg_catalog.jsonb, 'parsed', $15,"
		"  'refusal', $16))",
		16, t, v, n, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not build the answer of complete()");
	{
		bool		isnull;

		result = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	PG_RETURN_JSONB_P(result);
}

/* evaluate()'s grading calls */
typedef struct GradingCalls
{
	Call	  **calls;
	int			n;
	int			next;
} GradingCalls;

static Call *
grading_next(void *arg)
{
	GradingCalls *gc = (GradingCalls *) arg;

	return gc->next < gc->n ? gc->calls[gc->next++] : NULL;
}

static void
grading_done(Call *c, void *arg)
{
	/* each call stays in GradingCalls.calls, to be read afterwards */
}

PG_FUNCTION_INFO_V1(evaluate);
/*
 * maester.evaluate(content text, checks jsonb DEFAULT NULL,
 *					context jsonb DEFAULT NULL) RETURNS jsonb
 *
 * llm_rubric checks are asked of grading calls, all at once (call.c's
 * two passes); a grading call that fails is this function's error.
 */
Datum
evaluate(PG_FUNCTION_ARGS)
{
	text	   *content;
	Jsonb	   *checks = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);
	Jsonb	   *context = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	GradeAsks	asks;
	GradingCalls gc;
	GradeAnswers answers;
	Jsonb	   *result;
	MemoryContext cxt;

	maester_check_catalog();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("content must not be null")));
	content = PG_GETARG_TEXT_PP(0);
	memset(&asks, 0, sizeof(asks));
	result = maester_evaluate(VARDATA_ANY(content), VARSIZE_ANY_EXHDR(content),
							  checks, context, call_grader_ask, &asks);
	if (asks.n == 0)
		PG_RETURN_JSONB_P(result);

	/* the checks ask for models' verdicts: grading calls, concurrently */
	maester_require_preload();
	cxt = AllocSetContextCreate(CurrentMemoryContext, "maester grading calls",
								ALLOCSET_DEFAULT_SIZES);
	gc.n = asks.n;
	gc.next = 0;
	gc.calls = palloc(sizeof(Call *) * asks.n);
	for (int i = 0; i < asks.n; i++)
		gc.calls[i] = call_prepare_grader(asks.prompts[i], asks.models[i], i + 1,
										  AllocSetContextCreate(cxt, "maester grading call",
																ALLOCSET_DEFAULT_SIZES),
										  NULL);
	{
		CallDriver	d = {.next = grading_next, .done = grading_done, .arg = &gc,
		.concurrency = Min(asks.n, MAESTER_MAX_CONCURRENCY), .isolation = CALLS_SHARED};

		run_calls(&d);
	}
	answers.grades = palloc0(sizeof(Grade) * asks.n);
	answers.n = asks.n;
	answers.next = 0;
	for (int i = 0; i < asks.n; i++)
	{
		if (gc.calls[i]->phase == PHASE_DONE)
			call_succeeded_finish(gc.calls[i]);
		call_grade_of(gc.calls[i], &answers.grades[i], CurrentMemoryContext);
	}
	result = maester_evaluate(VARDATA_ANY(content), VARSIZE_ANY_EXHDR(content),
							  checks, context, call_grader_answer, &answers);
	MemoryContextDelete(cxt);
	PG_RETURN_JSONB_P(result);
}
