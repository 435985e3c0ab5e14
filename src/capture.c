/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  What maester.replay needs of a call: its prompt, variables, options
 *	  and output, kept in maester.capture while maester.capture_content is
 *	  on (a superuser setting, off by default: prompt and response text are
 *	  stored only when asked for).  replay() itself is SQL.
 *
 * The row is written in the caller's transaction, as the last step of a
 * successful call: a rollback loses the capture, never the ledger row.  It
 * is written as the table's owner: users cannot insert captures, so
 * replay() runs only what a call really sent.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "call.h"
#include "capture.h"
#include "jsonutil.h"
#include "settings.h"
#include "tenant.h"
#include "util.h"

/*
 * With maester.capture_content on, keep what replay needs in
 * maester.capture, in the caller's transaction.
 */
void
capture_call(const Generation *g, text *content, text *system, Jsonb *messages,
			 Jsonb *vars, Jsonb *options, int max_tokens)
{
	Datum		v[15];
	char		n[15];
	Oid			t[15] = {UUIDOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID, TEXTOID,
	TEXTOID, TEXTOID, TEXTOID, INT4OID, JSONBOID, TEXTOID, FLOAT8OID, JSONBOID};
	OwnerScope	scope;
	JsonbValue *sc = g->evaluation ? json_get(&g->evaluation->root, "reliability_score") : NULL;

	memset(n, ' ', sizeof(n));
	v[0] = UUIDPGetDatum(&g->request_id);
	v[1] = CStringGetTextDatum(maester_current_tenant());
	v[2] = g->prompt_name ? CStringGetTextDatum(g->prompt_name) : (Datum) 0;
	n[2] = g->prompt_name ? ' ' : 'n';
	v[3] = g->prompt_version ? CStringGetTextDatum(g->prompt_version) : (Datum) 0;
	n[3] = g->prompt_version ? ' ' : 'n';
	v[4] = vars ? JsonbPGetDatum(vars) : (Datum) 0;
	n[4] = vars ? ' ' : 'n';
	v[5] = content ? PointerGetDatum(content) : (Datum) 0;
	n[5] = content ? ' ' : 'n';
	v[6] = system ? PointerGetDatum(system) : (Datum) 0;
	n[6] = system ? ' ' : 'n';
	v[7] = g->requested_model ? CStringGetTextDatum(g->requested_model) : (Datum) 0;
	n[7] = g->requested_model ? ' ' : 'n';
	v[8] = CStringGetTextDatum(g->model);
	v[9] = CStringGetTextDatum(g->provider);
	v[10] = Int32GetDatum(max_tokens);
	n[10] = max_tokens > 0 ? ' ' : 'n';
	v[11] = options ? JsonbPGetDatum(options) : (Datum) 0;
	n[11] = options ? ' ' : 'n';
	v[12] = CStringGetTextDatum(g->resp.content);
	v[13] = sc && sc->type == jbvNumeric ?
		DirectFunctionCall1(numeric_float8, NumericGetDatum(sc->val.numeric)) : (Datum) 0;
	n[13] = sc && sc->type == jbvNumeric ? ' ' : 'n';
	v[14] = messages ? JsonbPGetDatum(messages) : (Datum) 0;
	n[14] = messages ? ' ' : 'n';
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* as the table's owner: users cannot insert captures themselves */
	maester_become_owner(maester_table_oid("capture"), &scope);
	if (SPI_execute_with_args("INSERT INTO maester.capture (request_id, tenant, prompt_name, "
							  "prompt_version, variables, prompt, system, requested_model, model, "
							  "provider, max_tokens, options, output, eval_score, messages) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
							  15, t, v, n, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not capture the call");
	maester_restore_user(&scope);
	SPI_finish();
}
