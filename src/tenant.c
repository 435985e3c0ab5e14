/*-------------------------------------------------------------------------
 *
 * tenant.c
 *	  Tenants bound to roles: a session acts only as a tenant its role is
 *	  mapped to in maester.tenant_member.
 *
 * maester.tenant names the tenant a session acts as; it is a setting, and
 * anyone may set a setting, so it is never trusted by itself.  The tenant
 * in force is the setting checked against the mapping:
 *
 *	 - an admin (a superuser, or a member of maester_admin) acts as any
 *	   tenant;
 *	 - anyone else acts as a tenant mapped to a role they are a member of
 *	   (membership as for SET ROLE: a role they could become), and
 *	 - the setting's default, 'default', means "my tenant": the role's only
 *	   mapped tenant, or 'default' itself for a role mapped to none (a
 *	   database that does not use tenants).  A role mapped to several must
 *	   name one.
 *
 * Every tenant policy and every entry point that records a tenant asks
 * maester_current_tenant(), which raises 42501 when the setting names a
 * tenant the current role may not act as (after SET ROLE, or from ALTER
 * ROLE ... SET or connection options).  SET maester.tenant itself (and
 * set_config, and a function's SET clause) is refused at once with 42501
 * by the setting's check hook, so the last allowed tenant stays in force.
 * maester's workers set a job's tenant through maester_set_tenant, which
 * skips that check: the job's call checks it as its submitter.  A tenant
 * name with a control character (a newline forging a log line, an escape
 * sequence) is refused from every source.
 *
 * The mapping is read from the table directly (neither the role's
 * privileges nor row-level security apply), cached per backend, and
 * forgotten on a relcache invalidation of the table (its trigger queues
 * one) or a change of role membership; the last answer is cached too, so
 * that a policy asking once per row costs a comparison.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "catalog.h"
#include "tenant.h"
#include "util.h"

typedef struct Member
{
	Oid			role;
	char		tenant[NAMEDATALEN];
} Member;

/* the mapping */
static Member *members = NULL;
static int	nmembers = 0;
static int	members_size = 0;
static bool members_valid = false;
static Oid	members_relid = InvalidOid;

/* the last answer */
static bool answer_valid = false;
static Oid	answer_user = InvalidOid;
static char answer_setting[NAMEDATALEN];
static char answer_tenant[NAMEDATALEN];

/* maester's own workers are setting a job's tenant */
static bool internal_set = false;

typedef enum Resolution
{
	TENANT_OK,
	TENANT_NOT_MAPPED,			/* the role may not act as it */
	TENANT_SEVERAL				/* 'default' for a role mapped to several */
} Resolution;

static void
relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == members_relid)
	{
		members_valid = false;
		answer_valid = false;
	}
}

static void
role_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	answer_valid = false;
}

/* Called from _PG_init */
void
tenant_init(void)
{
	CacheRegisterRelcacheCallback(relcache_callback, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHMEMMEMROLE, role_callback, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHOID, role_callback, (Datum) 0);
}

/* Read maester.tenant_member (in a transaction) */
static void
load_members(void)
{
	Oid			nsp;
	Oid			relid;
	Relation	rel;
	Snapshot	snap;
	TableScanDesc scan;
	HeapTuple	tup;

	if (members_valid)
		return;
	nmembers = 0;
	nsp = get_namespace_oid("maester", true);
	relid = OidIsValid(nsp) ? get_relname_relid("tenant_member", nsp) : InvalidOid;
	members_relid = relid;
	if (!OidIsValid(relid))
		return;					/* not cached: looked for again next time */
	rel = table_open(relid, AccessShareLock);
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		Datum		role = heap_getattr(tup, 1, RelationGetDescr(rel), &isnull);
		Datum		tenant;

		if (isnull)
			continue;
		tenant = heap_getattr(tup, 2, RelationGetDescr(rel), &isnull);
		if (isnull)
			continue;
		if (nmembers == members_size)
		{
			members_size = Max(16, members_size * 2);
			members = members == NULL
				? MemoryContextAlloc(TopMemoryContext, sizeof(Member) * members_size)
				: repalloc(members, sizeof(Member) * members_size);
		}
		members[nmembers].role = DatumGetObjectId(role);
		text_to_cstring_buffer(DatumGetTextPP(tenant), members[nmembers].tenant, NAMEDATALEN);
		nmembers++;
	}
	table_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	members_valid = true;
}

/* Is `user` a superuser or has it the privileges of maester_admin? */
bool
maester_is_admin(Oid user)
{
	Oid			admin;

	if (superuser_arg(user))
		return true;
	admin = get_role_oid("maester_admin", true);
	return OidIsValid(admin) && has_privs_of_role(user, admin);
}

/*
 * The tenant `user` acts as when the setting is `setting` (see the
 * header), into `out` (NAMEDATALEN).  Needs a transaction.
 */
static Resolution
resolve(Oid user, const char *setting, char *out)
{
	const char *only = NULL;
	bool		several = false;

	strlcpy(out, setting, NAMEDATALEN);
	if (maester_is_admin(user))
		return TENANT_OK;
	load_members();
	for (int i = 0; i < nmembers; i++)
	{
		if (!is_member_of_role(user, members[i].role))
			continue;
		if (strcmp(members[i].tenant, setting) == 0)
			return TENANT_OK;
		if (only == NULL)
			only = members[i].tenant;
		else if (strcmp(only, members[i].tenant) != 0)
			several = true;
	}
	if (strcmp(setting, "default") != 0)
		return TENANT_NOT_MAPPED;
	if (several)
		return TENANT_SEVERAL;
	if (only != NULL)
		strlcpy(out, only, NAMEDATALEN);
	return TENANT_OK;
}

/*
 * The tenant this session acts as, checked (see the header); raises 42501
 * when the current role may not act as the one maester.tenant names.
 */
const char *
maester_current_tenant(void)
{
	Oid			user = GetUserId();
	const char *setting = GetConfigOption("maester.tenant", true, false);
	char		tenant[NAMEDATALEN];
	Resolution	r;

	if (setting == NULL)
		setting = "default";
	if (answer_valid && answer_user == user && strcmp(answer_setting, setting) == 0)
		return answer_tenant;
	r = resolve(user, setting, tenant);
	if (r == TENANT_NOT_MAPPED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" may not act as tenant \"%s\"",
						GetUserNameFromId(user, false), setting),
				 errdetail("maester.tenant names a tenant that no role of this session is mapped to."),
				 errhint("An admin maps roles to tenants in maester.tenant_member.")));
	if (r == TENANT_SEVERAL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" acts for several tenants and maester.tenant names none of them",
						GetUserNameFromId(user, false)),
				 errhint("SET maester.tenant to one of the tenants maester.tenant_member maps the role to.")));
	answer_user = user;
	strlcpy(answer_setting, setting, NAMEDATALEN);
	strlcpy(answer_tenant, tenant, NAMEDATALEN);
	answer_valid = true;
	return answer_tenant;
}

/*
 * From maester.tenant's check hook: may the current role set it to
 * `tenant`?  A name with a control character is refused from any source.
 * The rest is checked for SET (and set_config, and SET clauses of
 * functions), in a database where maester's catalog is served; other
 * sources (a role's or database's defaults, connection options, a parallel
 * worker restoring its leader's settings) are checked where the tenant is
 * used.
 */
bool
tenant_check_setting(const char *tenant, GucSource source)
{
	char		out[NAMEDATALEN];
	char	   *why;
	Resolution	r;

	/* whatever the source: a tenant name goes into every row and log line */
	if (maester_control_char(tenant) != NULL)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errmsg("tenant name \"%s\" contains a control character",
						 maester_cut_short(tenant, 64));
		GUC_check_errdetail("Tenant names are one line of printable characters.");
		return false;
	}
	if (internal_set || source != PGC_S_SESSION || !IsTransactionState() ||
		IsAbortedTransactionBlockState() || !OidIsValid(MyDatabaseId) ||
		IsParallelWorker() || IsBinaryUpgrade)
		return true;
	if (!maester_catalog_served(&why))
		return true;
	r = resolve(GetUserId(), tenant, out);
	if (r == TENANT_OK)
		return true;
	GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
	if (r == TENANT_NOT_MAPPED)
	{
		GUC_check_errmsg("role \"%s\" may not act as tenant \"%s\"",
						 GetUserNameFromId(GetUserId(), false), tenant);
		GUC_check_errhint("An admin maps roles to tenants in maester.tenant_member.");
	}
	else
	{
		GUC_check_errmsg("role \"%s\" acts for several tenants: maester.tenant must name one of them",
						 GetUserNameFromId(GetUserId(), false));
		GUC_check_errhint("SET maester.tenant to one of the tenants maester.tenant_member maps the role to.");
	}
	return false;
}

/*
 * maester's own setting of a job's (or callback's) tenant: not checked
 * here, but by the job's call, as its submitter.
 */
void
maester_set_tenant(const char *tenant, GucAction action)
{
	bool		save = internal_set;

	internal_set = true;
	PG_TRY();
	{
		(void) set_config_option("maester.tenant", tenant, PGC_USERSET,
								 PGC_S_SESSION, action, true, 0, false);
	}
	PG_FINALLY();
	{
		internal_set = save;
	}
	PG_END_TRY();
}

PG_FUNCTION_INFO_V1(current_tenant);
/*
 * maester.current_tenant() RETURNS text: the tenant this session acts as;
 * every tenant policy compares with it.
 */
Datum
current_tenant(PG_FUNCTION_ARGS)
{
	maester_check_catalog();
	PG_RETURN_TEXT_P(cstring_to_text(maester_current_tenant()));
}
