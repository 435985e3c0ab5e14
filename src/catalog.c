/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  Which version of maester's catalog (tables, types, functions) this
 *	  library runs against, and the refusal to run against another one.
 *
 * The library fills fixed shapes: the attributes of maester.generation,
 * the column lists its workers write, the columns it reads.  Run against
 * a catalog of another version, it would corrupt memory or fail on every
 * record.  So every SQL-callable C function and every worker first checks
 * pg_extension.extversion against the versions this library serves (one:
 * MAESTER_VERSION), and refuses with SQLSTATE 55000 and a hint otherwise:
 * an older catalog needs ALTER EXTENSION maester UPDATE, a newer one the
 * library of its version.  This is the case between installing a new
 * version's files, restarting the server and updating the extension.
 *
 * (The other way, TimescaleDB's, is a small loader that picks a versioned
 * library per database.  maester does not take it: its workers and shared
 * memory belong to the server, not to a database, and two libraries could
 * not both own them; and updating in place is one statement.)
 *
 * The check is cheap once done: the answer is cached per backend and
 * forgotten when pg_proc changes, which every update of maester does (its
 * update script re-creates every function) and which reaches every backend
 * through the shared invalidation queue at commit.  While maester's own
 * install or update script runs, the check passes: the script may call
 * the library's validators whatever version it installs.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "catalog.h"

/* the catalog versions this library serves */
static const char *const served_versions[] = {MAESTER_VERSION};

static bool catalog_known = false;	/* served_ok and catalog_version are valid */
static bool served_ok = false;
static char catalog_version[64];

/* pg_proc changed (maester's scripts re-create its functions): look again */
static void
catalog_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	catalog_known = false;
}

/* Called from _PG_init */
void
catalog_init(void)
{
	CacheRegisterSyscacheCallback(PROCOID, catalog_callback, (Datum) 0);
}

/* The installed version of maester in this database into `out`, or false */
static bool
read_extversion(char *out, size_t size)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("maester"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
		{
			text_to_cstring_buffer(DatumGetTextPP(d), out, size);
			found = true;
		}
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/* Compare dotted version strings numerically: <0, 0, >0 */
static int
version_cmp(const char *a, const char *b)
{
	while (*a || *b)
	{
		long		x = strtol(a, (char **) &a, 10);
		long		y = strtol(b, (char **) &b, 10);

		if (x != y)
			return x < y ? -1 : 1;
		if (*a == '.')
			a++;
		if (*b == '.')
			b++;
		if ((*a && !isdigit((unsigned char) *a)) || (*b && !isdigit((unsigned char) *b)))
			return strcmp(a, b);
	}
	return 0;
}

/* Fill the cache (in a transaction) */
static void
catalog_lookup(void)
{
	if (catalog_known)
		return;
	served_ok = false;
	if (!read_extversion(catalog_version, sizeof(catalog_version)))
		catalog_version[0] = '\0';
	else
		for (int i = 0; i < lengthof(served_versions); i++)
			if (strcmp(catalog_version, served_versions[i]) == 0)
				served_ok = true;
	catalog_known = true;
}

/* Is maester's own install or update script running? */
static bool
in_own_script(void)
{
	return creating_extension &&
		CurrentExtensionObject == get_extension_oid("maester", true);
}

/*
 * Does this library serve the catalog?  When not, *why says so (palloc'd).
 * For workers, which wait instead of raising.  Needs a transaction.
 */
bool
maester_catalog_served(char **why)
{
	catalog_lookup();
	if (served_ok)
		return true;
	if (catalog_version[0] == '\0')
		*why = psprintf("extension maester is not installed in this database");
	else
		*why = psprintf("the maester library %s does not serve the catalog of version %s",
						MAESTER_VERSION, catalog_version);
	return false;
}

/*
 * Raise 55000 unless this library serves the catalog (see the header);
 * every SQL-callable function calls it first.
 */
void
maester_check_catalog(void)
{
	if (likely(catalog_known && served_ok))
		return;
	catalog_lookup();
	if (served_ok || in_own_script())
		return;
	if (catalog_version[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension maester is not installed in this database")));
	if (version_cmp(catalog_version, MAESTER_VERSION) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the maester library %s does not serve the catalog of version %s",
						MAESTER_VERSION, catalog_version),
				 errdetail("The server runs a newer library than this database's extension; nothing was done."),
				 errhint("Run ALTER EXTENSION maester UPDATE.")));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the maester library %s does not serve the catalog of version %s",
					MAESTER_VERSION, catalog_version),
			 errdetail("This database's extension is newer than the library the server runs; nothing was done."),
			 errhint("Install maester %s and restart the server.", catalog_version)));
}
