/*-------------------------------------------------------------------------
 *
 * circuit.h
 *	  Circuit breakers (per database, provider and model) and rate pacing
 *	  (per database and provider), in shared memory.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_CIRCUIT_H
#define MAESTER_CIRCUIT_H

#include "datatype/timestamp.h"

#include "router.h"

typedef enum CircuitAdmit
{
	CIRCUIT_ADMIT,				/* closed: go ahead */
	CIRCUIT_ADMIT_PROBE,		/* half-open: this call is the probe */
	CIRCUIT_SKIP				/* open: do not call */
} CircuitAdmit;

extern Size circuit_shmem_size(void);
extern void circuit_shmem_init(void);

extern CircuitAdmit circuit_admit(ProviderConf *p, const char *model);
extern void circuit_record(ProviderConf *p, const char *model, bool success, bool counts);
extern void circuit_release_probe(ProviderConf *p, const char *model);
extern void circuit_forget_database(Oid dboid);

extern bool rate_reserve(ProviderConf *p, int64 tokens, int64 max_wait_us,
						 TimestampTz *turn);
extern bool tenant_rate_reserve(const char *tenant, int requests_per_minute,
								int tokens_per_minute, int64 tokens,
								int64 max_wait_us, TimestampTz *turn);

#endif							/* MAESTER_CIRCUIT_H */
