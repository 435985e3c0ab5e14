/*-------------------------------------------------------------------------
 *
 * kb.c
 *	  Knowledge bases: the SQL entry points (kb_dispatch) and the knowledge
 *	  worker, which takes documents through parse -> chunk -> embed ->
 *	  index in the background.
 *
 * Entry points.  maester.kb_create, ingest, kb_sync and the others are one
 * C function, kb_dispatch: it takes the caller's tenant as the calling
 * role (maester_current_tenant: a tenant the role is mapped to, 42501
 * otherwise) and its role name, then runs maester.<name>_as(tenant, role,
 * arguments...) -- plain SQL in src/sql/functions/95_knowledge.sql -- as
 * the owner of maester's tables.  The SQL finds knowledge bases by name
 * among that tenant's only.  SECURITY DEFINER would not do: inside one,
 * the current role is the definer's, and the caller's tenant is lost.
 *
 * The knowledge worker.  One per database, started by the launcher when
 * documents wait (maester.kb_wake() at the commit of an ingest; the
 * resident worker's periodic check after a restart), within
 * maester.max_extra_workers; it exits when idle for KB_IDLE_EXIT_MS.
 * Each round:
 *	 1. parse and chunk up to KB_PARSE_BATCH waiting documents, each step
 *		of each in a subtransaction, so that a document that fails fails
 *		alone (stage failed, with error_class and error_message; an
 *		external failure such as pdftotext's is retried with backoff first);
 *	 2. for every knowledge base with chunks to embed and no pause: one
 *		batch per embedding profile it needs (the active one, and the one
 *		kb_reindex builds), of at most KB_EMBED_INPUTS chunks (their
 *		documents' ids, as ranges, are the calls' tags): maester.embed sends
 *		them in several requests at once.  Chunks whose text
 *		already has a vector of the profile in the knowledge base take it
 *		(nothing sent).  The rest go through maester.embed, as the kb's
 *		owner and tenant: metered, budgeted, traced like every call.  An
 *		input the provider refuses (bad_request) fails its document; a
 *		failure that belongs to no document (no model, no key, budget,
 *		circuit, the provider down, an answer from another model than the
 *		profile's first) pauses the knowledge base with the reason, backing
 *		off up to 10 minutes, and charges no document;
 *	 3. index: documents with every vector become current (the version they
 *		replace stops answering in the same transaction); a reindex whose
 *		profile is complete becomes the active one.
 * The embedding call runs in a transaction of its own that writes nothing
 * and holds no lock until the vectors come back; they are stored in that
 * transaction, so a crash between the provider's answer and the commit
 * sends that batch again (its first calls are in the ledger).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "catalog.h"
#include "kb.h"
#include "launcher.h"
#include "ledger.h"
#include "router.h"
#include "settings.h"
#include "tenant.h"
#include "trace.h"
#include "util.h"

PGDLLEXPORT void maester_kb_main(Datum arg);

#define KB_IDLE_EXIT_MS 10000
#define KB_POLL_MS 1000
#define KB_PARSE_BATCH 128
#define KB_PARSE_GROUP 30		/* documents a transaction: 60 subtransactions at most */
#define KB_EMBED_DOCS 1000		/* (and KB_EMBED_INPUTS chunks, and ranges of ids that fit the calls' tags) */
#define KB_EMBED_INPUTS 2048
#define KB_MAX_DIMENSIONS 2000	/* in line (PLAIN) in an 8 kB page */

static bool KbToWake = false;
static bool KbXactCallbackRegistered = false;
static LedgerSlot *KbSlot = NULL;
static bool KbIdleExit = false;
static Oid	KbWorkerRole = InvalidOid;

/* Ask for the knowledge worker (or wake it) */
static void
kb_want(LedgerSlot *slot)
{
	Latch	   *latch;

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	slot->kb_wanted = true;
	latch = slot->kb_latch;
	LWLockRelease(slot->lock);
	if (latch != NULL)
		SetLatch(latch);
	else
		wake_launcher();
}

static void
kb_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && KbToWake && ledger_shared != NULL)
	{
		LedgerSlot *slot = slot_find(MyDatabaseId);

		if (slot == NULL)
			slot = slot_claim(MyDatabaseId);
		if (slot != NULL)
			kb_want(slot);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
		KbToWake = false;
}

PG_FUNCTION_INFO_V1(kb_wake);
/* maester.kb_wake(): the knowledge worker is asked for at commit */
Datum
kb_wake(PG_FUNCTION_ARGS)
{
	if (!KbXactCallbackRegistered)
	{
		RegisterXactCallback(kb_xact_callback, NULL);
		KbXactCallbackRegistered = true;
	}
	KbToWake = true;
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(kb_check_model);
/* maester.kb_check_model(model text): the router's error when none serves it */
Datum
kb_check_model(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));

	maester_check_catalog();
	(void) router_plan(model);
	PG_RETURN_VOID();
}

/*
 * The resident worker, now and then: documents that wait with no
 * knowledge worker (after a restart, or when it could not be started).
 * Runs in the caller's transaction, with SPI connected.
 */
void
kb_check_waiting(LedgerSlot *slot)
{
	bool		running;

	LWLockAcquire(slot->lock, LW_SHARED);
	running = slot->kb_pid != 0 || slot->kb_wanted;
	LWLockRelease(slot->lock);
	if (running)
		return;
	if (SPI_execute("SELECT 1 FROM maester.document d "
					"WHERE d.stage OPERATOR(pg_catalog.<>) ALL (ARRAY['indexed', 'failed']) "
					"UNION ALL SELECT 1 FROM maester.kb k WHERE k.next_profile_id IS NOT NULL LIMIT 1",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for waiting documents");
	if (SPI_processed > 0)
		kb_want(slot);
}

PG_FUNCTION_INFO_V1(kb_dispatch);
/*
 * maester.kb_create, ingest, kb_sync...: maester.<name>_as(tenant, role,
 * the same arguments), as the owner of maester's tables; see the header.
 */
Datum
kb_dispatch(PG_FUNCTION_ARGS)
{
	HeapTuple	proc;
	Form_pg_proc form;
	char	   *name;
	int			nargs;
	Oid		   *types;
	Datum	   *values;
	char	   *nulls;
	StringInfoData sql;
	const char *tenant;
	char	   *role;
	OwnerScope	scope;
	TupleDesc	rettupdesc = NULL;
	TypeFuncClass rclass;
	Oid			rettype;
	Datum		result = (Datum) 0;
	bool		isnull = true;
	MemoryContext callcxt = CurrentMemoryContext;

	maester_check_catalog();
	proc = SearchSysCache1(PROCOID, ObjectIdGetDatum(fcinfo->flinfo->fn_oid));
	if (!HeapTupleIsValid(proc))
		elog(ERROR, "cache lookup failed for function %u", fcinfo->flinfo->fn_oid);
	form = (Form_pg_proc) GETSTRUCT(proc);
	name = pstrdup(NameStr(form->proname));
	nargs = form->pronargs;
	types = palloc((nargs + 2) * sizeof(Oid));
	values = palloc((nargs + 2) * sizeof(Datum));
	nulls = palloc(nargs + 2);
	memcpy(types + 2, form->proargtypes.values, nargs * sizeof(Oid));
	ReleaseSysCache(proc);

	/* who calls: as the calling role */
	tenant = maester_current_tenant();
	role = GetUserNameFromId(GetUserId(), false);
	types[0] = TEXTOID;
	values[0] = CStringGetTextDatum(tenant);
	types[1] = NAMEOID;
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(role));
	nulls[0] = nulls[1] = ' ';
	for (int i = 0; i < nargs; i++)
	{
		values[i + 2] = PG_GETARG_DATUM(i);
		nulls[i + 2] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT * FROM maester.%s_as(", quote_identifier(name));
	for (int i = 0; i < nargs + 2; i++)
		appendStringInfo(&sql, "%s$%d", i ? ", " : "", i + 1);
	appendStringInfoChar(&sql, ')');

	rclass = get_call_result_type(fcinfo, &rettype, &rettupdesc);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	maester_become_owner(maester_table_oid("kb"), &scope);
	if (SPI_execute_with_args(sql.data, nargs + 2, types, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run maester.%s_as", name);
	maester_restore_user(&scope);
	if (SPI_processed == 1)
	{
		HeapTuple	t = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;

		if (rclass == TYPEFUNC_COMPOSITE)
		{
			Datum	   *v = palloc(rettupdesc->natts * sizeof(Datum));
			bool	   *n = palloc(rettupdesc->natts * sizeof(bool));
			MemoryContext old;

			for (int i = 0; i < rettupdesc->natts; i++)
				v[i] = SPI_getbinval(t, d, i + 1, &n[i]);
			old = MemoryContextSwitchTo(callcxt);
			rettupdesc = BlessTupleDesc(rettupdesc);
			result = HeapTupleGetDatum(heap_form_tuple(rettupdesc, v, n));
			MemoryContextSwitchTo(old);
			isnull = false;
		}
		else
		{
			result = SPI_getbinval(t, d, 1, &isnull);
			if (!isnull)
				result = SPI_datumTransfer(result, get_typbyval(rettype), get_typlen(rettype));
		}
	}
	SPI_finish();
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/* ---------------------------------------------------------------------
 * The knowledge worker
 * ---------------------------------------------------------------------
 */

/* Run `sql` (no arguments) in the worker's SPI connection */
static void
kb_exec(const char *sql, int expect)
{
	int			rc = SPI_execute(sql, false, 0);

	if (rc != expect)
		elog(ERROR, "knowledge worker: \"%.60s\" failed: %s", sql, SPI_result_code_string(rc));
}

/* A parse or chunk step of one document, for maester_subxact */
typedef struct DocStep
{
	const char *fn;				/* maester.kb_work_parse or _chunk */
	int64		doc;
} DocStep;

static void
doc_step_fn(void *arg)
{
	DocStep    *s = (DocStep *) arg;
	Oid			t[1] = {INT8OID};
	Datum		v[1] = {Int64GetDatum(s->doc)};
	char	   *sql = psprintf("SELECT %s($1)", s->fn);

	if (SPI_execute_with_args(sql, 1, t, v, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run %s", s->fn);
}

/* Record a document's failure; retry: an external cause, tried again later */
static void
doc_fail(int64 doc, const char *error_class, const char *message, bool retry)
{
	Oid			t[4] = {INT8OID, TEXTOID, TEXTOID, BOOLOID};
	Datum		v[4] = {Int64GetDatum(doc), CStringGetTextDatum(error_class),
		CStringGetTextDatum(message), BoolGetDatum(retry)};

	if (SPI_execute_with_args("SELECT maester.kb_work_fail($1, $2, $3, $4)", 4, t, v, NULL,
							  false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not record a document's failure");
}

/*
 * SQLSTATE classes of failures outside the document (system errors such as
 * pdftotext timing out or not starting, lack of resources): tried again
 * later.  Everything else -- pdftotext refusing the document (38000), an
 * unsupported type, bad bytes -- is the document's.
 */
static bool
external_error(int sqlerrcode)
{
	char	   *state = unpack_sql_state(sqlerrcode);

	return strncmp(state, "58", 2) == 0 || strncmp(state, "53", 2) == 0;
}

/* 1. Parse and chunk waiting documents; true when there were some */
static bool
kb_parse_round(void)
{
	int64		docs[KB_PARSE_BATCH];
	bool		queued[KB_PARSE_BATCH];
	int			n;
	MemoryContext cxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, "parsing and chunking documents");

	/*
	 * Each kb's oldest first, in turn: one kb's backlog does not hold up the
	 * others.  No row lock: this is the database's only knowledge worker,
	 * and a lock held across the steps' subtransactions would turn every
	 * document row into a multixact that later scans pay for.
	 */
	kb_exec(psprintf("SELECT w.id, w.stage OPERATOR(pg_catalog.=) 'queued' "
					 "FROM (SELECT x.id, x.stage, pg_catalog.row_number() OVER (PARTITION BY x.kb_id ORDER BY x.id) AS turn "
					 "FROM maester.document x "
					 "WHERE x.stage OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'parsed']) "
					 "AND (x.next_attempt_at IS NULL OR x.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now())) w "
					 "WHERE w.turn OPERATOR(pg_catalog.<=) %d ORDER BY w.turn, w.id LIMIT %d",
					 KB_PARSE_BATCH, KB_PARSE_BATCH),
			SPI_OK_SELECT);
	n = (int) SPI_processed;
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		docs[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		queued[i] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);

	/*
	 * Groups of KB_PARSE_GROUP documents a transaction, each step of each in
	 * a subtransaction (so that a document that fails fails alone): fewer
	 * than the 64 subtransactions a snapshot keeps track of (past that,
	 * every session's visibility checks slow down), committed without
	 * waiting for the WAL flush: a step lost in a crash is done again, and
	 * nothing was billed for it.
	 */
	for (int g = 0; g < n; g += KB_PARSE_GROUP)
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SetConfigOption("synchronous_commit", "off", PGC_USERSET, PGC_S_SESSION);
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		for (int i = g; i < Min(n, g + KB_PARSE_GROUP); i++)
		{
			DocStep		s = {"maester.kb_work_parse", docs[i]};
			ErrorData  *edata = NULL;
			const char *step = "parse";

			CHECK_FOR_INTERRUPTS();
			if (queued[i])
				edata = maester_subxact(doc_step_fn, &s, cxt);
			if (edata == NULL)
			{
				s.fn = "maester.kb_work_chunk";
				step = "chunk";
				edata = maester_subxact(doc_step_fn, &s, cxt);
			}
			if (edata != NULL)
			{
				maester_rethrow_if_worker_error(edata);
				doc_fail(docs[i], step, edata->message, external_error(edata->sqlerrcode));
				FreeErrorData(edata);
			}
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		SetConfigOption("synchronous_commit", "on", PGC_USERSET, PGC_S_SESSION);
		MemoryContextSwitchTo(cxt);
	}
	return n > 0;
}

/* A batch to embed: see kb_embed_batch */
typedef struct EmbedBatch
{
	int64		kb_id;
	int64		profile_id;
	char	   *kb_name;
	char	   *tenant;
	Oid			owner;
	char	   *model;
	char	   *options;		/* maester.embed's options */
	char	   *served_model;	/* the profile's, NULL until its first vector */
	int			served_dims;
	int			n;
	int64	   *chunks;
	int64	   *docs;
	Datum		inputs;			/* text[] */
	char		trace_id[33];	/* the batch's trace */
	char		span_id[17];
	TimestampTz started;
	/* what came back */
	Datum	   *vectors;
	char	  **models;
	char	  **error_classes;
	char	  **error_messages;
} EmbedBatch;

/* Pause a knowledge base: its queue waits, backing off */
static void
kb_pause(int64 kb_id, const char *reason)
{
	Oid			t[2] = {INT8OID, TEXTOID};
	Datum		v[2] = {Int64GetDatum(kb_id), CStringGetTextDatum(reason)};

	if (SPI_execute_with_args("SELECT maester.kb_work_pause($1, $2)", 2, t, v, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not pause a knowledge base");
}

/* maester.embed, as the kb's owner and tenant, for maester_subxact */
static void
embed_call_fn(void *arg)
{
	EmbedBatch *b = (EmbedBatch *) arg;
	Oid			t[3] = {TEXTARRAYOID, TEXTOID, JSONBOID};
	Datum		v[3];
	int			save_nestlevel = NewGUCNestLevel();
	MemoryContext keep = CurrentMemoryContext;

	v[0] = b->inputs;
	v[1] = CStringGetTextDatum(b->model);
	v[2] = DirectFunctionCall1(jsonb_in, CStringGetDatum(b->options));
	maester_set_tenant(b->tenant, GUC_ACTION_SAVE);
	/* the call's spans: children of the batch's root span (kb_work_embedded) */
	(void) set_config_option("maester.traceparent", psprintf("00-%s-%s-01", b->trace_id, b->span_id),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	SetUserIdAndSecContext(b->owner, SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_execute_with_args("SELECT e.ordinal, e.embedding, e.model, e.error_class, e.error_message "
							  "FROM maester.embed($1, $2, $3) e", 3, t, v, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not call maester.embed");
	SetUserIdAndSecContext(KbWorkerRole, 0);
	AtEOXact_GUC(false, save_nestlevel);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;
		int			i = DatumGetInt32(SPI_getbinval(tup, d, 1, &isnull)) - 1;
		Datum		vec;
		MemoryContext old;

		if (i < 0 || i >= b->n)
			continue;
		vec = SPI_getbinval(tup, d, 2, &isnull);
		old = MemoryContextSwitchTo(keep);
		b->vectors[i] = isnull ? (Datum) 0 : PointerGetDatum(PG_DETOAST_DATUM_COPY(vec));
		b->models[i] = SPI_getvalue(tup, d, 3);
		b->error_classes[i] = SPI_getvalue(tup, d, 4);
		b->error_messages[i] = SPI_getvalue(tup, d, 5);
		MemoryContextSwitchTo(old);
	}
}

/*
 * 2. One batch of a knowledge base's chunks under one profile: reuse what
 * the knowledge base has, embed the rest.  Own transactions.  True when
 * there was something to do.
 */
static bool
kb_embed_batch(int64 kb_id, int64 profile_id)
{
	EmbedBatch	b;
	MemoryContext cxt = CurrentMemoryContext;
	ErrorData  *edata;
	Oid			t[2] = {INT8OID, INT8OID};
	Datum		v[2] = {Int64GetDatum(kb_id), Int64GetDatum(profile_id)};
	StringInfoData opts;
	const char *pause = NULL;
	int			stored = 0;

	memset(&b, 0, sizeof(b));
	b.kb_id = kb_id;
	b.profile_id = profile_id;

	/* what to embed (vectors the knowledge base has are taken: one transaction) */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, "embedding chunks");
	if (SPI_execute_with_args("SELECT k.name, k.tenant, k.owner::text, p.model, p.dimensions, p.normalize, "
							  "p.served_model, p.served_dimensions "
							  "FROM maester.kb k, maester.embedding_profile p "
							  "WHERE k.id OPERATOR(pg_catalog.=) $1 AND p.id OPERATOR(pg_catalog.=) $2",
							  2, t, v, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read a knowledge base");
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(cxt);
		char	   *dims = SPI_getvalue(tup, d, 5);
		char	   *owner = SPI_getvalue(tup, d, 3);

		b.kb_name = SPI_getvalue(tup, d, 1);
		b.tenant = SPI_getvalue(tup, d, 2);
		b.owner = get_role_oid(owner, true);
		b.model = SPI_getvalue(tup, d, 4);
		b.served_model = SPI_getvalue(tup, d, 7);
		b.served_dims = DatumGetInt32(SPI_getbinval(tup, d, 8, &isnull));
		if (isnull)
			b.served_dims = 0;
		initStringInfo(&opts);
		/* a provider that hangs holds up the kb's queue for at most a minute a batch */
		appendStringInfo(&opts, "{\"normalize\": %s, \"input_type\": \"document\", \"timeout_ms\": 60000",
						 DatumGetBool(SPI_getbinval(tup, d, 6, &isnull)) ? "true" : "false");
		if (dims)
			appendStringInfo(&opts, ", \"dimensions\": %s", dims);
		if (!OidIsValid(b.owner))
			pause = psprintf("its owner, role \"%s\", no longer exists", owner);
		MemoryContextSwitchTo(old);
	}
	if (b.kb_name != NULL && pause == NULL)
	{
		if (SPI_execute_with_args(psprintf("SELECT chunk_id, document_id, input FROM maester.kb_work_batch($1, $2, %d, %d)",
										   KB_EMBED_DOCS, KB_EMBED_INPUTS),
								  2, t, v, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not choose chunks to embed");
		b.n = (int) SPI_processed;
	}
	if (b.n > 0)
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);
		Datum	   *texts = palloc(b.n * sizeof(Datum));
		int64		lastdoc = -1;
		bool		inrange = false;

		b.chunks = palloc(b.n * sizeof(int64));
		b.docs = palloc(b.n * sizeof(int64));
		b.vectors = palloc0(b.n * sizeof(Datum));
		b.models = palloc0(b.n * sizeof(char *));
		b.error_classes = palloc0(b.n * sizeof(char *));
		b.error_messages = palloc0(b.n * sizeof(char *));
		/* tags: the kb (its name when short) and the documents, within the ledger's 512 bytes */
		appendStringInfo(&opts, ", \"tags\": {\"kb_id\": " INT64_FORMAT, b.kb_id);
		if (strlen(b.kb_name) <= 64)
		{
			appendStringInfoString(&opts, ", \"kb\": ");
			escape_json(&opts, b.kb_name);
		}
		/* the documents as ranges of ids ("1-40,45,47-60"): they come in id order */
		appendStringInfoString(&opts, ", \"documents\": \"");
		for (int i = 0; i < b.n; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;
			bool		isnull;

			b.chunks[i] = DatumGetInt64(SPI_getbinval(tup, d, 1, &isnull));
			b.docs[i] = DatumGetInt64(SPI_getbinval(tup, d, 2, &isnull));
			if (b.docs[i] != lastdoc)
			{
				if (lastdoc >= 0 && b.docs[i] == lastdoc + 1)
					inrange = true;
				else
				{
					if (opts.len > 440)
					{
						b.n = i;	/* the next documents' chunks: next batch */
						break;
					}
					if (inrange)
						appendStringInfo(&opts, "-" INT64_FORMAT, lastdoc);
					appendStringInfo(&opts, "%s" INT64_FORMAT, lastdoc >= 0 ? "," : "", b.docs[i]);
					inrange = false;
				}
			}
			texts[i] = PointerGetDatum(PG_DETOAST_DATUM_COPY(SPI_getbinval(tup, d, 3, &isnull)));
			lastdoc = b.docs[i];
		}
		if (inrange)
			appendStringInfo(&opts, "-" INT64_FORMAT, lastdoc);
		appendStringInfoString(&opts, "\"}}");
		b.options = opts.data;
		b.inputs = PointerGetDatum(construct_array(texts, b.n, TEXTOID, -1, false, TYPALIGN_INT));
		MemoryContextSwitchTo(old);
	}
	if (pause != NULL)
		kb_pause(kb_id, pause);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	if (b.n == 0)
		return false;

	/*
	 * The batch is made durable before it is sent (maester.kb_batch), and
	 * deleted in the transaction that stores what it brought: a batch left
	 * after a crash was sent, and is never sent again by itself.
	 */
	trace_random_hex(b.trace_id, 16);
	trace_random_hex(b.span_id, 8);
	b.started = GetCurrentTimestamp();
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	{
		Oid			mt[5] = {TEXTOID, INT8OID, INT8OID, INT8ARRAYOID, INT4OID};
		Datum		mv[5];
		Datum	   *dd = palloc(b.n * sizeof(Datum));

		for (int i = 0; i < b.n; i++)
			dd[i] = Int64GetDatum(b.docs[i]);
		mv[0] = CStringGetTextDatum(b.trace_id);
		mv[1] = Int64GetDatum(b.kb_id);
		mv[2] = Int64GetDatum(b.profile_id);
		mv[3] = PointerGetDatum(construct_array(dd, b.n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		mv[4] = Int32GetDatum(b.n);
		if (SPI_execute_with_args("INSERT INTO maester.kb_batch (trace_id, kb_id, profile_id, documents, chunks) "
								  "SELECT $1, $2, $3, ARRAY(SELECT DISTINCT pg_catalog.unnest($4)), $5",
								  5, mt, mv, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record a batch");
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);

	/* the call, and what it brought, in one transaction */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	edata = maester_subxact(embed_call_fn, &b, cxt);
	if (edata != NULL)
	{
		maester_rethrow_if_worker_error(edata);
		pause = psprintf("embedding failed (%s): %s", unpack_sql_state(edata->sqlerrcode), edata->message);
	}
	else
	{
		SPIPlanPtr	insert;
		Oid			it[3] = {INT8OID, INT8OID, FLOAT4ARRAYOID};

		insert = SPI_prepare("INSERT INTO maester.chunk_embedding (profile_id, chunk_id, kb_id, document_id, live, "
							 "tenant, embedding) "
							 "SELECT $1, c.id, c.kb_id, c.document_id, d.current, c.tenant, $3 "
							 "FROM maester.chunk c JOIN maester.document d ON d.id OPERATOR(pg_catalog.=) c.document_id "
							 "WHERE c.id OPERATOR(pg_catalog.=) $2 ON CONFLICT DO NOTHING", 3, it);
		if (insert == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		for (int i = 0; i < b.n; i++)
		{
			CHECK_FOR_INTERRUPTS();
			if (b.vectors[i] != (Datum) 0)
			{
				ArrayType  *a = DatumGetArrayTypeP(b.vectors[i]);
				int			dims = ArrayGetNItems(ARR_NDIM(a), ARR_DIMS(a));

				/* the first vector of a profile says which model makes them */
				if (b.served_model == NULL && b.models[i] != NULL)
				{
					Oid			st[3] = {INT8OID, TEXTOID, INT4OID};
					Datum		sv[3] = {Int64GetDatum(b.profile_id), CStringGetTextDatum(b.models[i]),
					Int32GetDatum(dims)};

					if (SPI_execute_with_args("UPDATE maester.embedding_profile SET served_model = $2, "
											  "served_dimensions = $3 WHERE id OPERATOR(pg_catalog.=) $1 "
											  "AND served_model IS NULL", 3, st, sv, NULL, false, 0) != SPI_OK_UPDATE)
						elog(ERROR, "could not record the profile's model");
					b.served_model = b.models[i];
					b.served_dims = dims;
				}
				if (dims > KB_MAX_DIMENSIONS)
				{
					pause = psprintf("%s answered vectors of %d dimensions; a knowledge base keeps at most %d "
									 "(ask for fewer with kb_reindex(..., dimensions => %d))",
									 b.models[i] ? b.models[i] : "the model", dims, KB_MAX_DIMENSIONS,
									 KB_MAX_DIMENSIONS);
					continue;
				}
				if (b.models[i] == NULL || strcmp(b.models[i], b.served_model) != 0 ||
					dims != b.served_dims)
				{
					pause = psprintf("%s answered with %d dimensions, but the profile's vectors come from %s with %d: "
									 "they are kept apart (a fallback?)",
									 b.models[i] ? b.models[i] : "a model", dims, b.served_model, b.served_dims);
					continue;
				}
				{
					Datum		iv[3] = {Int64GetDatum(b.profile_id), Int64GetDatum(b.chunks[i]), b.vectors[i]};

					if (SPI_execute_plan(insert, iv, NULL, false, 0) != SPI_OK_INSERT)
						elog(ERROR, "could not store a vector");
					stored++;
				}
			}
			else if (b.error_classes[i] != NULL && strcmp(b.error_classes[i], "bad_request") == 0)
				doc_fail(b.docs[i], "embedding",
						 psprintf("the provider refused chunk %lld: %s", (long long) b.chunks[i],
								  b.error_messages[i] ? b.error_messages[i] : "(no message)"),
						 false);
			else if (pause == NULL)
				pause = psprintf("embedding failed (%s): %s",
								 b.error_classes[i] ? b.error_classes[i] : "error",
								 b.error_messages[i] ? b.error_messages[i] : "(no message)");
		}
		SPI_freeplan(insert);
		if (stored > 0)
		{
			Oid			et[6] = {INT8OID, INT8ARRAYOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, INT8OID};
			Datum		ev[6];
			Datum	   *dd = palloc(b.n * sizeof(Datum));

			for (int i = 0; i < b.n; i++)
				dd[i] = Int64GetDatum(b.docs[i]);
			ev[0] = Int64GetDatum(b.kb_id);
			ev[1] = PointerGetDatum(construct_array(dd, b.n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
			ev[2] = CStringGetTextDatum(b.trace_id);
			ev[3] = CStringGetTextDatum(b.span_id);
			ev[4] = TimestampTzGetDatum(b.started);
			ev[5] = Int64GetDatum(b.profile_id);
			if (SPI_execute_with_args("SELECT maester.kb_work_embedded($1, $2, $3, $4, $5, $6)",
									  6, et, ev, NULL, false, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not trace a batch");
		}
	}
	{
		Oid			dt[1] = {TEXTOID};
		Datum		dv[1] = {CStringGetTextDatum(b.trace_id)};

		if (SPI_execute_with_args("DELETE FROM maester.kb_batch WHERE trace_id OPERATOR(pg_catalog.=) $1",
								  1, dt, dv, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not finish a batch");
	}
	if (pause != NULL)
		kb_pause(kb_id, pause);
	else
	{
		Oid			rt[1] = {INT8OID};
		Datum		rv[1] = {Int64GetDatum(kb_id)};

		if (SPI_execute_with_args("UPDATE maester.kb SET paused_reason = NULL, paused_until = NULL, pauses = 0 "
								  "WHERE id OPERATOR(pg_catalog.=) $1 AND paused_reason IS NOT NULL",
								  1, rt, rv, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not resume a knowledge base");
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	if (pause != NULL)
		ereport(LOG, (errmsg("maester knowledge base \"%s\" paused: %s", b.kb_name, pause)));
	return stored > 0 && pause == NULL;
}

/* 3. Index what is complete in a knowledge base; true when something moved */
static bool
kb_index_step(int64 kb_id, int64 unused)
{
	MemoryContext cxt = CurrentMemoryContext;
	Oid			t[1] = {INT8OID};
	Datum		v[1] = {Int64GetDatum(kb_id)};
	bool		isnull;
	bool		moved = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, "indexing documents");
	if (SPI_execute_with_args("SELECT maester.kb_work_index($1)", 1, t, v, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not index documents");
	if (SPI_processed == 1 &&
		DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) > 0)
		moved = true;
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	return moved;
}

/*
 * A step for one knowledge base; when it fails (a vector the table refuses,
 * a trigger someone added...) the knowledge base pauses with the error instead of
 * the worker stopping: other knowledge bases go on.
 */
static bool
kb_guarded(bool (*step) (int64, int64), int64 kb_id, int64 profile_id)
{
	MemoryContext cxt = CurrentMemoryContext;
	ErrorData  *edata;
	volatile bool moved = false;

	PG_TRY();
	{
		moved = step(kb_id, profile_id);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		maester_rethrow_if_worker_error(edata);
		/*
		 * A lock someone holds (an open transaction), or a deadlock with a
		 * user's write of the same documents (the worker gives way: its
		 * deadlock_timeout is shorter): this kb waits a round, unpaused.
		 */
		if (edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
			edata->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED)
		{
			FreeErrorData(edata);
			MemoryContextSwitchTo(cxt);
			return false;
		}
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		kb_pause(kb_id, psprintf("internal failure: %s", edata->message));
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(cxt);
		ereport(LOG, (errmsg("maester knowledge base %lld paused: %s", (long long) kb_id, edata->message)));
	}
	PG_END_TRY();
	return moved;
}

/* 2 and 3 for every knowledge base with work; true when something moved */
static bool
kb_embed_round(void)
{
	int			n;
	int64	   *kbs;
	int64	   *profiles;
	int64	   *nexts;
	bool		moved = false;
	MemoryContext cxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* batches a crash interrupted (this is the database's only knowledge worker) */
	kb_exec("SELECT maester.kb_work_interrupted()", SPI_OK_SELECT);
	kb_exec("SELECT k.id, k.profile_id, k.next_profile_id FROM maester.kb k "
			"WHERE (k.paused_until IS NULL OR k.paused_until OPERATOR(pg_catalog.<=) pg_catalog.now()) "
			"AND (k.next_profile_id IS NOT NULL OR EXISTS (SELECT FROM maester.document d "
			"WHERE d.kb_id OPERATOR(pg_catalog.=) k.id "
			"AND d.stage OPERATOR(pg_catalog.=) ANY (ARRAY['chunked', 'embedded']))) ORDER BY k.id",
			SPI_OK_SELECT);
	n = (int) SPI_processed;
	kbs = MemoryContextAlloc(cxt, (n + 1) * sizeof(int64));
	profiles = MemoryContextAlloc(cxt, (n + 1) * sizeof(int64));
	nexts = MemoryContextAlloc(cxt, (n + 1) * sizeof(int64));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;

		kbs[i] = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
		profiles[i] = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
		nexts[i] = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull));
		if (isnull)
			nexts[i] = 0;
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);

	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		moved |= kb_guarded(kb_embed_batch, kbs[i], profiles[i]);
		if (nexts[i] != 0)
			moved |= kb_guarded(kb_embed_batch, kbs[i], nexts[i]);

		/* 3. index what is complete */
		moved |= kb_guarded(kb_index_step, kbs[i], 0);
	}
	return moved;
}

static void
kb_exit(int code, Datum arg)
{
	if (KbSlot == NULL)
		return;
	LWLockAcquire(KbSlot->lock, LW_EXCLUSIVE);
	if (KbSlot->kb_pid == MyProcPid)
	{
		KbSlot->kb_pid = 0;
		KbSlot->kb_latch = NULL;
		/* stopped (or failed) with work maybe left: a successor goes on */
		if (!KbIdleExit)
			KbSlot->kb_wanted = true;
	}
	LWLockRelease(KbSlot->lock);
	wake_launcher();
}

/* The knowledge worker's main */
void
maester_kb_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	LedgerSlot *slot;
	bool		taken = false;
	TimestampTz idle_since;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	if (!maester_worker_wait_catalog("knowledge worker", NULL) || (slot = slot_find(MyDatabaseId)) == NULL)
		proc_exit(0);
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	if (slot->kb_pid == 0)
	{
		slot->kb_pid = MyProcPid;
		slot->kb_latch = MyLatch;
		slot->kb_wanted = false;
		taken = true;
	}
	LWLockRelease(slot->lock);
	if (!taken)
		proc_exit(0);
	KbSlot = slot;
	before_shmem_exit(kb_exit, (Datum) 0);
	KbWorkerRole = GetUserId();
	SetConfigOption("application_name", "maester knowledge worker", PGC_USERSET, PGC_S_OVERRIDE);
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);
	/* a row someone keeps locked never holds up the other kbs for long */
	SetConfigOption("lock_timeout", "2000", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("deadlock_timeout", "100", PGC_SUSET, PGC_S_SESSION);

	idle_since = GetCurrentTimestamp();
	PG_TRY();
	{
		MemoryContext round = AllocSetContextCreate(TopMemoryContext, "maester knowledge round",
													ALLOCSET_DEFAULT_SIZES);

		pqsignal(SIGTERM, maester_worker_sigterm);
		while (!ShutdownRequestPending)
		{
			bool		moved;

			if (ConfigReloadPending)
			{
				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);
			}
			MemoryContextReset(round);
			MemoryContextSwitchTo(round);
			moved = kb_parse_round();
			moved |= kb_embed_round();
			MemoryContextSwitchTo(TopMemoryContext);
			pgstat_report_activity(STATE_IDLE, NULL);
			if (moved)
			{
				idle_since = GetCurrentTimestamp();
				CHECK_FOR_INTERRUPTS();
				continue;
			}
			if (TimestampDifferenceExceeds(idle_since, GetCurrentTimestamp(), KB_IDLE_EXIT_MS))
			{
				bool		wanted;

				/* asked for again meanwhile: go on */
				LWLockAcquire(slot->lock, LW_EXCLUSIVE);
				wanted = slot->kb_wanted;
				slot->kb_wanted = false;
				LWLockRelease(slot->lock);
				if (!wanted)
				{
					KbIdleExit = true;
					break;
				}
				idle_since = GetCurrentTimestamp();
				continue;
			}
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 KB_POLL_MS, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			/* a wake-up after an ingest: the work is there now */
			LWLockAcquire(slot->lock, LW_EXCLUSIVE);
			if (slot->kb_wanted)
			{
				slot->kb_wanted = false;
				idle_since = GetCurrentTimestamp();
			}
			LWLockRelease(slot->lock);
		}
	}
	PG_CATCH();
	{
		maester_worker_exit_after_error("maester knowledge worker");
	}
	PG_END_TRY();
	proc_exit(0);
}
