/*-------------------------------------------------------------------------
 *
 * stat.h
 *	  Live statistics per provider and model in shared memory.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_STAT_H
#define MAESTER_STAT_H

#include "utils/numeric.h"

extern Size stat_shmem_size(void);
extern void stat_shmem_init(void);
extern void stat_forget_database(Oid dboid);
extern void stat_attempt(const char *provider, const char *model,
						 const char *error_class, int64 input_tokens,
						 int64 output_tokens, Numeric cost);
extern void stat_call(const char *provider, const char *model, bool failed,
					  int attempts, bool fallback, double latency_ms);
extern bool stat_recent(const char *provider, const char *model, double *ms,
						double *failing, int64 *calls);

#endif							/* MAESTER_STAT_H */
