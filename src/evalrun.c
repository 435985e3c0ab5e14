/*-------------------------------------------------------------------------
 *
 * evalrun.c
 *	  maester.eval_run: an evaluation run, recorded so that no user can
 *	  forge or rewrite it.
 *
 * The calls and checks are SQL (maester.eval_run_calls), run as the caller:
 * the caller's tenant, budgets and privileges apply to every call, and the
 * calls are ledger rows like any other.  What they answered is then written
 * to maester.eval_run and maester.eval_result in one statement as the
 * tables' owner, under the caller's tenant.  Users have no INSERT or UPDATE
 * on those tables, so a run's results are what its calls answered and its
 * checks said, and nothing else; eval_run_calls writes nothing, so calling
 * it directly records nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "maester.h"
#include "tenant.h"
#include "util.h"

/*
 * The run and its results from eval_run_calls' answer ($1), for tenant $2,
 * started at $3; the summary is computed from the results.
 */
static const char *const record_sql =
"WITH r AS ("
"  SELECT * FROM pg_catalog.jsonb_to_recordset($1 OPERATOR(pg_catalog.->) 'results')"
"    AS e(case_name text, content text, score numeric, passed boolean, evaluation jsonb,"
"         cost_usd numeric, latency_ms double precision, trace_id text, request_id uuid,"
"         error text)), "
"run AS ("
"  INSERT INTO maester.eval_run (suite, prompt, prompt_version, model, started_at, finished_at,"
"                                cases, passed, errors, pass_rate, mean_score, total_cost_usd,"
"                                p50_latency_ms, p95_latency_ms, tenant)"
"  SELECT $1 OPERATOR(pg_catalog.->>) 'suite', $1 OPERATOR(pg_catalog.->>) 'prompt',"
"         $1 OPERATOR(pg_catalog.->>) 'prompt_version', $1 OPERATOR(pg_catalog.->>) 'model',"
"         $3, pg_catalog.clock_timestamp(),"
"         pg_catalog.count(*)::integer,"
"         pg_catalog.count(*) FILTER (WHERE r.passed)::integer,"
"         pg_catalog.count(*) FILTER (WHERE r.error IS NOT NULL)::integer,"
"         pg_catalog.round(pg_catalog.avg(CASE WHEN r.passed THEN 1 ELSE 0 END), 4),"
"         pg_catalog.round(pg_catalog.avg(r.score), 4),"
"         COALESCE(pg_catalog.sum(r.cost_usd), 0),"
"         pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY r.latency_ms),"
"         pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY r.latency_ms),"
"         $2"
"    FROM r"
"  RETURNING *), "
"res AS ("
"  INSERT INTO maester.eval_result (run_id, case_name, content, score, passed, evaluation,"
"                                   cost_usd, latency_ms, trace_id, request_id, error, tenant)"
"  SELECT run.id, r.case_name, r.content, r.score, r.passed, r.evaluation, r.cost_usd,"
"         r.latency_ms, r.trace_id, r.request_id, r.error, $2"
"    FROM run, r) "
"SELECT * FROM run";

PG_FUNCTION_INFO_V1(eval_run);
/*
 * maester.eval_run(suite text, prompt_version text, model text,
 *					concurrency integer) RETURNS maester.eval_run
 */
Datum
eval_run(PG_FUNCTION_ARGS)
{
	Oid			call_types[4] = {TEXTOID, TEXTOID, TEXTOID, INT4OID};
	Datum		call_args[4];
	char		call_nulls[4];
	Oid			rec_types[3] = {JSONBOID, TEXTOID, TIMESTAMPTZOID};
	Datum		rec_args[3];
	TupleDesc	resultdesc;
	OwnerScope	scope;
	TimestampTz started = GetCurrentTimestamp();
	MemoryContext callcxt = CurrentMemoryContext;
	const char *tenant;
	bool		isnull;
	Datum	   *values;
	bool	   *nulls;
	HeapTuple	result;

	maester_check_catalog();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("suite must not be NULL")));
	if (get_call_result_type(fcinfo, NULL, &resultdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "eval_run must return a composite type");
	resultdesc = BlessTupleDesc(resultdesc);
	tenant = maester_current_tenant();

	for (int i = 0; i < 4; i++)
	{
		call_nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
		call_args[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* the calls, as the caller */
	if (SPI_execute_with_args("SELECT maester.eval_run_calls($1, $2, $3, $4)",
							  4, call_types, call_args, call_nulls, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not run the evaluation's calls");
	rec_args[0] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		elog(ERROR, "maester.eval_run_calls returned NULL");
	rec_args[1] = CStringGetTextDatum(tenant);
	rec_args[2] = TimestampTzGetDatum(started);

	/* the record, as the tables' owner */
	maester_become_owner(maester_table_oid("eval_run"), &scope);
	if (SPI_execute_with_args(record_sql, 3, rec_types, rec_args, NULL, false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not record the evaluation run");
	maester_restore_user(&scope);

	if (SPI_tuptable->tupdesc->natts != resultdesc->natts)
		elog(ERROR, "maester.eval_run has %d columns, the catalog %d",
			 resultdesc->natts, SPI_tuptable->tupdesc->natts);
	{
		MemoryContext spicxt = MemoryContextSwitchTo(callcxt);

		values = palloc(sizeof(Datum) * resultdesc->natts);
		nulls = palloc(sizeof(bool) * resultdesc->natts);
		heap_deform_tuple(SPI_copytuple(SPI_tuptable->vals[0]), SPI_tuptable->tupdesc,
						  values, nulls);
		result = heap_form_tuple(resultdesc, values, nulls);
		MemoryContextSwitchTo(spicxt);
	}
	SPI_finish();
	PG_RETURN_DATUM(HeapTupleGetDatum(result));
}
