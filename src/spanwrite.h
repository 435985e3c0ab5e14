/*-------------------------------------------------------------------------
 *
 * spanwrite.h
 *	  Writing the span queue to maester.span (the resident worker).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_SPANWRITE_H
#define MAESTER_SPANWRITE_H

#include "ledger.h"

/* spans written in one insert, at most */
#define SPAN_CHUNK 512

extern long spans_write_due(LedgerSlot *slot, bool all, MemoryContext cxt);

#endif							/* MAESTER_SPANWRITE_H */
