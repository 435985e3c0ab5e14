/*-------------------------------------------------------------------------
 *
 * util.c
 *	  Helpers shared by the modules: the preload check, "run this in a
 *	  subtransaction and hand me the error", acting as the owner of
 *	  maester's tables, and names checked for control characters and cut
 *	  short for messages.  This file calls no other file of maester, so
 *	  any file may call it.
 *
 * Acting as the owner.  The gateway reads its configuration (providers,
 * prices, budgets) and writes some rows (jobs) on behalf of callers who
 * may not read or write those tables themselves.  It does so as the
 * table's owner, as a restricted operation (no temporary objects, nothing
 * that outlives it), with search_path pg_catalog, pg_temp, so that nothing
 * the caller put on the path can run with the owner's rights; the caller's
 * identity and settings come back with maester_restore_user() (in a
 * PG_FINALLY, or on the error path with the transaction's abort).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/syscache.h"

#include "util.h"

bool		maester_shmem_ready = false;

/*
 * Raise 55000 unless the library was preloaded (so that shared memory
 * exists).
 */
void
maester_require_preload(void)
{
	if (!maester_shmem_ready)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("maester must be loaded via shared_preload_libraries"),
				 errhint("Add maester to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * Run fn(arg) in a subtransaction, in the caller's memory context.  NULL
 * when it succeeded; else the subtransaction is rolled back and the error,
 * copied into `errcxt`, is returned for the caller to judge (rethrow a
 * cancel, record the rest).  The caller's resource owner and memory
 * context are current again either way.
 */
ErrorData *
maester_subxact(void (*fn) (void *), void *arg, MemoryContext errcxt)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(errcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_END_TRY();
	return edata;
}

/*
 * A worker's error handling: cancel, shutdown and a catalog of another
 * version (55000) are the worker's own, not one record's; they go on up.
 */
void
maester_rethrow_if_worker_error(ErrorData *edata)
{
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN ||
		edata->sqlerrcode == ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE)
		ReThrowError(edata);
}

/* Owner of a relation */
Oid
maester_relation_owner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/* The OID of table maester.`name`; raises if it is missing */
Oid
maester_table_oid(const char *name)
{
	Oid			relid = get_relname_relid(name, get_namespace_oid("maester", false));

	if (!OidIsValid(relid))
		elog(ERROR, "table maester.%s not found", name);
	return relid;
}

/* Act as the owner of relation `relid`; see the header comment */
void
maester_become_owner(Oid relid, OwnerScope *scope)
{
	Oid			owner = maester_relation_owner(relid);

	GetUserIdAndSecContext(&scope->save_userid, &scope->save_sec);
	SetUserIdAndSecContext(owner, scope->save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	scope->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

/* Back to the identity and settings maester_become_owner saved */
void
maester_restore_user(OwnerScope *scope)
{
	AtEOXact_GUC(false, scope->save_nestlevel);
	SetUserIdAndSecContext(scope->save_userid, scope->save_sec);
}

/*
 * The first control character of `s` -- C0 (newline, tab, escape...), DEL,
 * or in a UTF-8 database C1 (U+0080 to U+009F) -- or NULL.  Safe outside a
 * transaction (for settings' check hooks).
 */
const char *
maester_control_char(const char *s)
{
	bool		utf8 = GetDatabaseEncoding() == PG_UTF8;

	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
		if (*p < 0x20 || *p == 0x7f ||
			(utf8 && p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
			return (const char *) p;
	return NULL;
}

/*
 * `s` for an error message: at most `max` bytes (cut at a character
 * boundary, then "..."), control characters shown as '?'.  Names given by
 * users are echoed this way, never whole.
 */
char *
maester_cut_short(const char *s, int max)
{
	int			len = strlen(s);
	int			cut = pg_mbcliplen(s, len, max);
	char	   *out = palloc(cut + 4);

	memcpy(out, s, cut);
	out[cut] = '\0';
	for (unsigned char *p = (unsigned char *) out; *p; p++)
	{
		if (*p < 0x20 || *p == 0x7f)
			*p = '?';
		else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f &&
				 GetDatabaseEncoding() == PG_UTF8)
			p[0] = p[1] = '?';
	}
	if (cut < len)
		strcpy(out + cut, "...");
	return out;
}

/*
 * Bytes of `s` once converted to UTF-8, as providers receive it (in a
 * LATIN1 or WIN1251 database a byte may become two or three).
 */
int64
maester_utf8_length(const char *s)
{
	int			len;
	char	   *u;
	int64		n;

	if (s == NULL)
		return 0;
	len = strlen(s);
	if (GetDatabaseEncoding() == PG_UTF8 || GetDatabaseEncoding() == PG_SQL_ASCII)
		return len;
	u = pg_server_to_any(s, len, PG_UTF8);
	n = strlen(u);
	if (u != s)
		pfree(u);
	return n;
}

/*
 * SIGTERM of a worker that runs user code or long steps (the callback
 * worker, the knowledge worker): stop, and stop what runs now at its next
 * interrupt check, as a cancel that ShutdownRequestPending tells apart from
 * the code's own errors.
 */
void
maester_worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	ShutdownRequestPending = true;
	QueryCancelPending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * The end of such a worker after an error escaped its loop (in PG_CATCH):
 * a failure is logged and exits 1 (the launcher starts a successor), a
 * shutdown exits 0.
 */
void
maester_worker_exit_after_error(const char *who)
{
	ErrorData  *edata;

	HOLD_INTERRUPTS();
	MemoryContextSwitchTo(TopMemoryContext);
	edata = CopyErrorData();
	FlushErrorState();
	AbortOutOfAnyTransaction();
	if (!ShutdownRequestPending)
	{
		ereport(LOG, (errmsg("%s failed: %s", who, edata->message)));
		proc_exit(1);
	}
	proc_exit(0);
}

/*
 * A statement a process runs again and again (a worker's ledger rows, spans,
 * jobs), planned once and kept for the process (SPI must be connected):
 * *plan is set only once the plan is kept, so an error on the way leaves
 * it NULL, to be prepared at the next use.  The plan cache replans it when
 * what it reads changes.
 */
SPIPlanPtr
maester_kept_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, types);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(p) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*plan = p;
	}
	return *plan;
}
