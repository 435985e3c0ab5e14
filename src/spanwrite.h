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

#define SPAN_CHUNK 512			/* spans in one transaction, at most */
#define SPAN_STEP 8			/* spans per statement when they cannot go directly */

extern long spans_write_due(LedgerSlot *slot, bool all, bool (*yield) (void),
							MemoryContext cxt);

#endif							/* MAESTER_SPANWRITE_H */
