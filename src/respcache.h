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

extern void respcache_lookup(Call *c);
extern uint64 respcache_hit(Call *c);
extern void respcache_store(Call *c);

#endif							/* MAESTER_RESPCACHE_H */
