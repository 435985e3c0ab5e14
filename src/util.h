/*-------------------------------------------------------------------------
 *
 * util.h
 *	  Small helpers every module may use; util.c uses no other module.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_UTIL_H
#define MAESTER_UTIL_H

#include "utils/elog.h"
#include "utils/palloc.h"

/* set by maester.c once shared memory exists (shared_preload_libraries) */
extern bool maester_shmem_ready;

extern void maester_require_preload(void);
extern void maester_rethrow_if_worker_error(ErrorData *edata);
extern void maester_worker_sigterm(SIGNAL_ARGS);
extern void maester_worker_exit_after_error(const char *who) pg_attribute_noreturn();
extern ErrorData *maester_subxact(void (*fn) (void *), void *arg,
								  MemoryContext errcxt);
extern Oid	maester_relation_owner(Oid relid);
extern const char *maester_control_char(const char *s);
extern char *maester_cut_short(const char *s, int max);

/* Acting as the owner of one of maester's tables, see util.c */
typedef struct OwnerScope
{
	Oid			save_userid;
	int			save_sec;
	int			save_nestlevel;
} OwnerScope;

extern void maester_become_owner(Oid relid, OwnerScope *scope);
extern void maester_restore_user(OwnerScope *scope);
extern Oid	maester_table_oid(const char *name);
extern int64 maester_utf8_length(const char *s);
extern struct _SPI_plan *maester_kept_plan(struct _SPI_plan **plan, const char *sql,
										   int nargs, Oid *types);

#endif							/* MAESTER_UTIL_H */
