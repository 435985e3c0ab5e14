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
#define SPAN_CHUNK 512			/* spans per insert while the ledger is quiet */
#define SPAN_CHUNK_BUSY 64		/* and while it is busy: ~0.8 ms, the most a ledger batch waits */

extern long spans_write_due(LedgerSlot *slot, bool all, int max_spans, MemoryContext cxt);

#endif							/* MAESTER_SPANWRITE_H */
