/*-------------------------------------------------------------------------
 *
 * walledger.h
 *	  Ledger records made durable by their backends, in WAL (walledger.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_WALLEDGER_H
#define MAESTER_WALLEDGER_H

#include "access/xlogdefs.h"
#include "nodes/pg_list.h"

#include "ledger.h"

/* applies `n` records read back from WAL (resident.c) */
typedef void (*WalLedgerApply) (LedgerRecord *batch, int n, void *arg);

/* the postmaster, at shared memory init */
extern bool wal_ledger_key(uint8 *key);

/* backends */
extern XLogRecPtr wal_ledger_log(LedgerRecord *rec);
extern void wal_ledger_flush(XLogRecPtr lsn);

/* the resident worker */
extern bool wal_ledger_start(WalLedgerApply apply, void *arg);
extern void wal_ledger_applied(XLogRecPtr commit_end, XLogRecPtr msg_end);
extern void wal_ledger_advance(LedgerSlot *slot);
extern void wal_ledger_release(void);
extern bool wal_ledger_sync_standbys(void);
extern bool wal_ledger_holding(void);

/* the launcher, for a database that is gone or has no maester */
extern void wal_ledger_drop(Oid dboid);
extern List *wal_ledger_idle_slot_dbs(void);

#endif							/* MAESTER_WALLEDGER_H */
