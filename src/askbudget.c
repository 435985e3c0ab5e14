/*-------------------------------------------------------------------------
 *
 * askbudget.c
 *	  maester.ask's joint reservation: the question's embedding and the
 *	  answer, reserved as one amount before either is sent.
 *
 * ask prepares the two calls it will make exactly as they will be made
 * (call_prepare_embedding and call_prepare: routed, rendered, their
 * worst-case input counted a token per byte), with the sources at the
 * most they can weigh (k times the kb's largest source), prices each at
 * its dearest target (fallbacks included), and opens a budget envelope
 * (budget.c) over both.  The calls then reserve as usual, out of the
 * envelope first; a concurrent spender cannot let the embedding through
 * and block the answer.  Nothing is sent here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "budget.h"
#include "call.h"
#include "catalog.h"
#include "inflight.h"
#include "request.h"
#include "tenant.h"
#include "util.h"

static char *
arg_cstring(FunctionCallInfo fcinfo, int i)
{
	return PG_ARGISNULL(i) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(i));
}

PG_FUNCTION_INFO_V1(ask_budget_open);
/*
 * maester.ask_budget_open(embedding_model text, embedding_input text,
 * prompt_name text, prompt_version text, variables jsonb, model text,
 * max_tokens integer, options jsonb) RETURNS numeric: opens the envelope
 * of an ask for the caller's tenant (embedding_input NULL: no embedding,
 * as in mode fts) and returns its worst case in USD (NULL: a part has no
 * price).  Raises MB001 when a blocking budget cannot hold it.
 */
Datum
ask_budget_open(PG_FUNCTION_ARGS)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "maester ask budget",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;
	BudgetPart	parts[2];
	int			n = 0;
	const char *tenant;
	Numeric		total = NULL;
	bool		priced = true;
	CallArgs	a;
	Call	   *c;

	maester_check_catalog();
	maester_require_preload();
	tenant = maester_current_tenant();
	old = MemoryContextSwitchTo(cxt);

	if (!PG_ARGISNULL(1))
	{
		CallOptions o;

		request_parse_options_alone(NULL, &o);
		c = call_prepare_embedding(list_make1(arg_cstring(fcinfo, 1)), arg_cstring(fcinfo, 0),
								   &o, 0, cxt);
		parts[n].prompt = NULL;
		parts[n].estimate = call_worst_cost(c, &parts[n].model);
		n++;
	}

	memset(&a, 0, sizeof(a));
	a.prompt_name = arg_cstring(fcinfo, 2);
	a.prompt_version = arg_cstring(fcinfo, 3);
	a.variables = PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4);
	a.model = arg_cstring(fcinfo, 5);
	a.max_tokens = PG_ARGISNULL(6) ? 0 : PG_GETARG_INT32(6);
	a.options = PG_ARGISNULL(7) ? NULL : PG_GETARG_JSONB_P(7);
	if (a.prompt_name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("ask_budget_open needs a prompt name")));
	c = call_prepare(&a, 0, cxt, NULL);
	parts[n].prompt = c->g.prompt_name;
	parts[n].estimate = call_worst_cost(c, &parts[n].model);
	n++;

	budget_envelope_open(tenant, parts, n, "the ask's query embedding and answer",
						 "Ask with fewer sources (k), a smaller max_tokens, or raise the budget.");

	for (int i = 0; i < n; i++)
	{
		if (parts[i].estimate == NULL)
			priced = false;
		else
			total = total == NULL ? parts[i].estimate :
				DatumGetNumeric(DirectFunctionCall2(numeric_add, NumericGetDatum(total),
													NumericGetDatum(parts[i].estimate)));
	}
	MemoryContextSwitchTo(old);
	if (!priced || total == NULL)
	{
		MemoryContextDelete(cxt);
		PG_RETURN_NULL();
	}
	total = DatumGetNumeric(datumCopy(NumericGetDatum(total), false, -1));
	MemoryContextDelete(cxt);
	PG_RETURN_NUMERIC(total);
}

PG_FUNCTION_INFO_V1(ask_budget_close);
/*
 * maester.ask_budget_close() RETURNS void: gives back what the ask's
 * envelope still holds (the end of the statement does it too).
 */
Datum
ask_budget_close(PG_FUNCTION_ARGS)
{
	budget_envelope_close();
	PG_RETURN_VOID();
}
