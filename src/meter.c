/*-------------------------------------------------------------------------
 *
 * meter.c
 *	  The cost of a call, at the price in force when it was made.
 *
 * SQL callers use maester.price_at / maester.cost_exact / maester.cost_of.
 * The gateway needs a cost twice per attempt (the worst-case estimate and
 * the real cost), so it does not run those SQL functions: each backend
 * keeps maester.price in memory (invalidated like the other caches when
 * the table changes) and computes the same formula with PostgreSQL's
 * numeric functions:
 *	 input  = ((input - cached - write) * input_price + cached * cache_read_price
 *			   + write * cache_creation_price) / 1e6
 *	 output = output * output_price / 1e6
 * with the cache prices defaulting to the input price, and the price of a
 * call being the latest row valid at the call for one of its names (the
 * id the provider reported, the id sent, the model's identity, the name
 * asked for; router.c), or for the undated name of a dated snapshot
 * (name-YYYY-MM-DD with a real date, name-YYYYMMDD, name-latest), or
 * without a vendor prefix (openai/gpt-4o).  maester.price_at finds its
 * row here too (price_key), so SQL and calls agree by construction.
 *
 * A model without a price costs NULL, and the backend warns once per model.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "storage/sinval.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "meter.h"
#include "router.h"
#include "util.h"

typedef struct PriceRow
{
	char	   *model;
	TimestampTz valid_from;
	Numeric		input;
	Numeric		output;
	Numeric		cache_read;		/* the input price when not given */
	Numeric		cache_write;
	Numeric		cache_write_1h;	/* twice the input price when not given */
} PriceRow;

static MemoryContext PriceContext = NULL;
static bool PriceStale = true;
static Oid	PriceRelid = InvalidOid;
static int	nprices = 0;
static PriceRow *prices = NULL;
static List *WarnedModels = NIL;	/* in TopMemoryContext */
static Numeric Million = NULL;

static void
price_cache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == PriceRelid)
		PriceStale = true;
}

void
meter_init(void)
{
	CacheRegisterRelcacheCallback(price_cache_callback, (Datum) 0);
}

/* (Re)load maester.price, as its owner, with a fixed search_path */
static void
price_load(void)
{
	OwnerScope	scope;

	if (PriceContext == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		PriceContext = AllocSetContextCreate(TopMemoryContext, "maester prices",
											 ALLOCSET_SMALL_SIZES);
		Million = DatumGetNumericCopy(DirectFunctionCall1(int8_numeric, Int64GetDatum(1000000)));
		MemoryContextSwitchTo(old);
	}
	MemoryContextReset(PriceContext);
	nprices = 0;
	prices = NULL;
	PriceStale = true;
	PriceRelid = get_relname_relid("price", get_namespace_oid("maester", false));

	maester_become_owner(PriceRelid, &scope);
	PG_TRY();
	{
		SPIPlanPtr	plan;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		plan = SPI_prepare("SELECT p.model, p.valid_from, p.input_cost_per_million, "
						   "p.output_cost_per_million, "
						   "COALESCE(p.cache_read_input_cost_per_million, p.input_cost_per_million), "
						   "COALESCE(p.cache_creation_input_cost_per_million, p.input_cost_per_million), "
						   "COALESCE(p.cache_creation_1h_input_cost_per_million, "
						   "         2 OPERATOR(pg_catalog.*) p.input_cost_per_million) "
						   "FROM maester.price p", 0, NULL);
		if (plan == NULL ||
			SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(), InvalidSnapshot,
								 true, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read maester.price");
		prices = MemoryContextAllocZero(PriceContext, sizeof(PriceRow) * Max(SPI_processed, 1));
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;
			bool		isnull;
			MemoryContext old = MemoryContextSwitchTo(PriceContext);

			prices[i].model = pstrdup(SPI_getvalue(t, d, 1));
			prices[i].valid_from = DatumGetTimestampTz(SPI_getbinval(t, d, 2, &isnull));
			prices[i].input = DatumGetNumericCopy(SPI_getbinval(t, d, 3, &isnull));
			prices[i].output = DatumGetNumericCopy(SPI_getbinval(t, d, 4, &isnull));
			prices[i].cache_read = DatumGetNumericCopy(SPI_getbinval(t, d, 5, &isnull));
			prices[i].cache_write = DatumGetNumericCopy(SPI_getbinval(t, d, 6, &isnull));
			prices[i].cache_write_1h = DatumGetNumericCopy(SPI_getbinval(t, d, 7, &isnull));
			MemoryContextSwitchTo(old);
		}
		nprices = SPI_processed;
		SPI_finish();
	}
	PG_FINALLY();
	{
		maester_restore_user(&scope);
	}
	PG_END_TRY();
	PriceStale = false;
}

/* The latest price of exactly `len` bytes of `model` valid at `at`, or NULL */
static PriceRow *
price_exact(const char *model, int len, TimestampTz at)
{
	PriceRow   *best = NULL;

	for (int i = 0; i < nprices; i++)
	{
		PriceRow   *p = &prices[i];

		if (strncmp(model, p->model, len) != 0 || p->model[len] != '\0' ||
			p->valid_from > at)
			continue;
		if (best == NULL || p->valid_from > best->valid_from)
			best = p;
	}
	return best;
}

/*
 * The price of a call known by `names` (most specific first: the id the
 * provider reported, the id sent, the model's identity, the name asked
 * for) at `at`, or NULL: an exact price of any of them first; then the
 * undated name of a dated snapshot (gpt-4.1-2025-04-14 as gpt-4.1); then
 * the same without a vendor prefix (openai/gpt-4o as gpt-4o).
 */
static PriceRow *
price_for(const char *const *names, int n, TimestampTz at)
{
	PriceRow   *p;

	for (int pass = 0; pass < 4; pass++)
		for (int i = 0; i < n; i++)
		{
			const char *m = names[i];
			const char *slash;

			if (m == NULL || m[0] == '\0')
				continue;
			if (pass >= 2)
			{
				if ((slash = strrchr(m, '/')) == NULL || slash[1] == '\0')
					continue;
				m = slash + 1;
			}
			if (pass % 2 == 0)
				p = price_exact(m, strlen(m), at);
			else
			{
				int			base = model_base_len(m);

				p = base < (int) strlen(m) ? price_exact(m, base, at) : NULL;
			}
			if (p)
				return p;
		}
	return NULL;
}

static Datum
num(int64 v)
{
	return DirectFunctionCall1(int8_numeric, Int64GetDatum(v));
}

/*
 * Exact cost in USD at `at` of a call known by `names` (see price_for;
 * names[0] is the one warned about), palloc'd in the caller's context, or
 * NULL (and *priced = false) when the model has no price.
 */
Numeric
maester_cost(const char *const *names, int nnames, int64 input_tokens, int64 output_tokens,
			 int64 cached_input_tokens, int64 cache_write_tokens,
			 int64 cache_write_1h_tokens, TimestampTz at, bool *priced)
{
	PriceRow   *p;
	const char *model = names[0];

	AcceptInvalidationMessages();
	if (PriceStale)
		price_load();
	p = price_for(names, nnames, at);
	*priced = p != NULL;
	if (p == NULL)
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
		return NULL;
	}
	else
	{
		int64		plain = input_tokens - cached_input_tokens - cache_write_tokens;
		Datum		in;
		Datum		out;
		Datum		total;

		in = DirectFunctionCall2(numeric_mul, num(plain), NumericGetDatum(p->input));
		in = DirectFunctionCall2(numeric_add, in,
								 DirectFunctionCall2(numeric_mul, num(cached_input_tokens),
													 NumericGetDatum(p->cache_read)));
		in = DirectFunctionCall2(numeric_add, in,
								 DirectFunctionCall2(numeric_mul,
													 num(cache_write_tokens - cache_write_1h_tokens),
													 NumericGetDatum(p->cache_write)));
		in = DirectFunctionCall2(numeric_add, in,
								 DirectFunctionCall2(numeric_mul, num(cache_write_1h_tokens),
													 NumericGetDatum(p->cache_write_1h)));
		in = DirectFunctionCall2(numeric_div, in, NumericGetDatum(Million));
		out = DirectFunctionCall2(numeric_div,
								  DirectFunctionCall2(numeric_mul, num(output_tokens),
													  NumericGetDatum(p->output)),
								  NumericGetDatum(Million));
		total = DirectFunctionCall2(numeric_add,
									DirectFunctionCall1(numeric_trim_scale, in),
									DirectFunctionCall1(numeric_trim_scale, out));
		return DatumGetNumeric(DirectFunctionCall1(numeric_trim_scale, total));
	}
}

PG_FUNCTION_INFO_V1(price_key);
/*
 * maester.price_key(model text, at timestamptz, OUT model text,
 *	 OUT valid_from timestamptz): the key of the maester.price row that
 * prices `model` at `at` -- the row a call to it would be charged at, by
 * the same rules (see price_for), the names being `model`, and when it is
 * a maester.model row's name or alias, that row's name and model id.  No
 * row when it has no price.  maester.price_at reads the row by this key.
 */
Datum
price_key(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(1);
	const char *names[3];
	PriceRow   *p;
	TupleDesc	desc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	maester_check_catalog();
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "price_key must return a composite");
	names[0] = model;
	names[1] = router_model_identity(model);
	names[2] = router_model_row_id(model);
	AcceptInvalidationMessages();
	if (PriceStale)
		price_load();
	p = price_for(names, 3, at);
	if (p == NULL)
		PG_RETURN_NULL();
	values[0] = CStringGetTextDatum(p->model);
	values[1] = TimestampTzGetDatum(p->valid_from);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
