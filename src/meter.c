/*-------------------------------------------------------------------------
 *
 * meter.c
 *	  The cost of a call, at the price in force when it was made.
 *
 * Prices and the arithmetic live in SQL (maester.price_at and
 * maester.cost_exact, numeric throughout), so that cost_of(), the ledger
 * and BI queries can never disagree; the gateway runs cost_exact through a
 * saved SPI plan.  A model without a price costs NULL, and the backend
 * warns once per model.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "maester.h"

static SPIPlanPtr CostPlan = NULL;
static List *WarnedModels = NIL;	/* in TopMemoryContext */

/*
 * Exact cost in USD of a call to `model` at `at`, palloc'd in the caller's
 * context, or NULL (and *priced = false) when the model has no price.
 */
Numeric
maester_cost(const char *model, int64 input_tokens, int64 output_tokens,
			 int64 cached_input_tokens, int64 cache_write_tokens,
			 TimestampTz at, bool *priced)
{
	MemoryContext callercxt = CurrentMemoryContext;
	Datum		args[6];
	Numeric		result = NULL;
	int			rc;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (CostPlan == NULL)
	{
		Oid			types[6] = {TEXTOID, INT8OID, INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("SELECT c.input_cost OPERATOR(pg_catalog.+) c.output_cost "
						   "FROM maester.cost_exact($1, $2, $3, $4, $5, $6) c",
						   6, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		CostPlan = plan;
	}
	args[0] = CStringGetTextDatum(model);
	args[1] = Int64GetDatum(input_tokens);
	args[2] = Int64GetDatum(output_tokens);
	args[3] = Int64GetDatum(cached_input_tokens);
	args[4] = Int64GetDatum(cache_write_tokens);
	args[5] = TimestampTzGetDatum(at);
	rc = SPI_execute_plan(CostPlan, args, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			MemoryContext old = MemoryContextSwitchTo(callercxt);

			result = DatumGetNumericCopy(d);
			MemoryContextSwitchTo(old);
		}
	}
	SPI_finish();

	*priced = result != NULL;
	if (result == NULL)
	{
		ListCell   *lc;
		bool		warned = false;

		foreach(lc, WarnedModels)
			if (strcmp((char *) lfirst(lc), model) == 0)
				warned = true;
		if (!warned)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			WarnedModels = lappend(WarnedModels, pstrdup(model));
			MemoryContextSwitchTo(old);
			ereport(WARNING,
					(errcode(ERRCODE_WARNING),
					 errmsg("model \"%s\" has no price: its calls are recorded with cost NULL", model),
					 errhint("Add its price with INSERT INTO maester.price.")));
		}
	}
	return result;
}
