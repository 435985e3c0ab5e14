/*-------------------------------------------------------------------------
 *
 * respcache.h
 *	  The response cache: an answer kept per tenant, returned again for
 *	  the same call.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_RESPCACHE_H
#define MAESTER_RESPCACHE_H

#include "call.h"

#define RESPCACHE_OFF		0
#define RESPCACHE_SKIPPED	1	/* asked for, but the call samples */
#define RESPCACHE_MISS		2
#define RESPCACHE_HIT		3

extern void respcache_lookup(Call *c);
extern uint64 respcache_hit(Call *c);
extern void respcache_store(Call *c);
extern const char *respcache_state_name(int state);

#endif							/* MAESTER_RESPCACHE_H */
