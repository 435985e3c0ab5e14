/*-------------------------------------------------------------------------
 *
 * launcher.h
 *	  The launcher of maester's workers, and what workers share with it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_LAUNCHER_H
#define MAESTER_LAUNCHER_H

#include "ledger.h"

extern void maester_register_launcher(void);
extern void maester_install_utility_hook(void);
extern bool maester_worker_wait_catalog(const char *who, LedgerSlot *slot);

#endif							/* MAESTER_LAUNCHER_H */
