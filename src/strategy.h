/*-------------------------------------------------------------------------
 *
 * strategy.h
 *	  Route strategies: which target of a route a call tries first.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_STRATEGY_H
#define MAESTER_STRATEGY_H

#include "call.h"

extern void route_strategy_apply(Call *c, Span *span);

#endif							/* MAESTER_STRATEGY_H */
