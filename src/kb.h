/*-------------------------------------------------------------------------
 *
 * kb.h
 *	  Knowledge bases: the entry points and the knowledge worker (kb.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_KB_H
#define MAESTER_KB_H

#include "ledger.h"

/* the resident worker's periodic check: documents wait, no worker runs */
extern void kb_check_waiting(LedgerSlot *slot);

#endif							/* MAESTER_KB_H */
