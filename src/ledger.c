/*-------------------------------------------------------------------------
 *
 * ledger.c
 *	  The backend side of the usage ledger: a queue per database in shared
 *	  memory, from which the ledger worker (worker.c) writes maester.usage.
 *
 * Why a worker: a row the caller wrote itself would die with its ROLLBACK,
 * and a backend killed mid-call would leave nothing.  So the caller never
 * writes the ledger.  For every attempt it queues a PENDING record (with
 * the attempt's worst-case cost) and waits until the worker has committed
 * it -- only then does the request leave; afterwards it queues the SETTLE
 * record and waits again, so that a call that returned is on disk.  The
 * worker commits whatever is queued in one transaction (group commit), so
 * concurrent callers share commits.  A worker that starts turns PENDING
 * rows of a previous server life, or of backends that are gone, into
 * 'orphaned' rows charged at their estimate.
 *
 * Shared memory: LedgerShared, then maester.max_databases slots, each a
 * LedgerSlot followed by two rings of maester.ledger_queue_size records:
 * the ledger's, and the spans' (written by a separate span writer, so that
 * ledger rows never wait behind spans; a full span ring drops spans).  A
 * slot is claimed for a database by its first caller (or its worker); each
 * slot has its own LWLock.  Lock order: never two slot locks at once.
 * Backends copy records in under the slot lock; a worker reads head and
 * tail under it and copies [tail, head) out without it (backends never
 * write there until the worker advances tail).  A backend waits for durability on its own
 * latch, which the worker sets after each commit.
 *
 * Fail closed: when no worker serves the database within
 * maester.ledger_timeout_ms, a call fails (MG006) before anything is sent.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"
#include "mb/pg_wchar.h"

#include "ledger.h"
#include "maester.h"
#include "settings.h"

LedgerShared *ledger_shared = NULL;

static LedgerSlot *MySlot = NULL;

/* A slot and its two rings (ledger, spans) */
static Size
slot_size(void)
{
	return MAXALIGN(add_size(MAXALIGN(sizeof(LedgerSlot)),
							 mul_size(sizeof(LedgerRecord),
									  mul_size(2, maester_ledger_queue_size))));
}

Size
ledger_shmem_size(void)
{
	return add_size(MAXALIGN(offsetof(LedgerShared, slots)),
					mul_size(slot_size(), maester_max_databases));
}

/* Called from maester.c's shmem startup hook, under AddinShmemInitLock */
void
ledger_shmem_init(void)
{
	bool		found;

	ledger_shared = ShmemInitStruct("maester ledger", ledger_shmem_size(), &found);
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche("maester ledger");

		memset(ledger_shared, 0, offsetof(LedgerShared, slots));
		ledger_shared->epoch = GetCurrentTimestamp();
		ledger_shared->nslots = maester_max_databases;
		ledger_shared->queue_size = maester_ledger_queue_size;
		ledger_shared->slot_size = slot_size();
		for (int i = 0; i < ledger_shared->nslots; i++)
		{
			LedgerSlot *slot = ledger_slot(i);

			memset(slot, 0, sizeof(LedgerSlot));
			slot->lock = &locks[i].lock;
		}
	}
}

LedgerSlot *
ledger_slot(int i)
{
	return (LedgerSlot *) (ledger_shared->slots +
						   MAXALIGN(offsetof(LedgerShared, slots)) -
						   offsetof(LedgerShared, slots) +
						   (Size) i * ledger_shared->slot_size);
}

LedgerRecord *
ledger_ring(LedgerSlot *slot)
{
	return (LedgerRecord *) ((char *) slot + MAXALIGN(sizeof(LedgerSlot)));
}

LedgerRecord *
span_ring(LedgerSlot *slot)
{
	return ledger_ring(slot) + ledger_shared->queue_size;
}

/* Copy `src` into `dst` of `size` bytes, cut at a character boundary */
void
ledger_copy_name(char *dst, const char *src, int size)
{
	int			len;

	if (src == NULL)
	{
		dst[0] = '\0';
		return;
	}
	len = strlen(src);
	if (len >= size)
		len = pg_mbcliplen(src, len, size - 1);
	memcpy(dst, src, len);
	dst[len] = '\0';
}

/* Wake the launcher (it starts workers for slots that have none) */
static void
wake_launcher(void)
{
	Latch	   *l = ledger_shared->launcher_latch;

	if (l)
		SetLatch(l);
}

/*
 * The slot of this database, claimed if need be, once its worker serves.
 * Waits up to maester.ledger_timeout_ms for the worker; raises MG006
 * (before anything is sent) when there is none.
 */
LedgerSlot *
ledger_attach(void)
{
	TimestampTz start = GetCurrentTimestamp();
	bool		woke = false;

	if (MySlot != NULL && MySlot->dboid == MyDatabaseId && MySlot->ready)
		return MySlot;

	for (;;)
	{
		LedgerSlot *found = NULL;
		LedgerSlot *free_slot = NULL;

		for (int i = 0; i < ledger_shared->nslots && found == NULL; i++)
		{
			LedgerSlot *slot = ledger_slot(i);

			LWLockAcquire(slot->lock, LW_EXCLUSIVE);
			if (slot->dboid == MyDatabaseId)
				found = slot;
			else if (slot->dboid == InvalidOid && free_slot == NULL)
			{
				slot->dboid = MyDatabaseId;		/* claim it */
				free_slot = slot;
				found = slot;
			}
			LWLockRelease(slot->lock);
		}
		if (found == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("no free ledger slot for this database"),
					 errhint("Raise maester.max_databases (currently %d) and restart the server.",
							 maester_max_databases)));
		MySlot = found;
		if (found->ready)
			return found;
		if (!woke)
		{
			wake_launcher();
			woke = true;
		}
		if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(), maester_ledger_timeout_ms))
			ereport(ERROR,
					(errcode(ERRCODE_MAESTER_LEDGER_UNAVAILABLE),
					 errmsg("the usage ledger of this database is not available"),
					 errdetail("No ledger worker served the database within %d ms; nothing was sent.",
							   maester_ledger_timeout_ms),
					 errhint("The worker restarts by itself; check the server log if this persists.")));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* This database's slot if it is attached and served, else NULL; no waiting */
LedgerSlot *
ledger_slot_if_ready(void)
{
	if (MySlot != NULL && MySlot->dboid == MyDatabaseId && MySlot->ready)
		return MySlot;
	return NULL;
}

/*
 * Queue `rec` (its seq, procno and epoch are filled in); returns its seq.
 * Waits while the ring is full.  Never throws once the record is queued.
 */
uint64
ledger_enqueue(LedgerSlot *slot, LedgerRecord *rec)
{
	TimestampTz start = GetCurrentTimestamp();

	rec->procno = MyProc->pgprocno;
	rec->backend_pid = MyProcPid;
	rec->epoch = ledger_shared->epoch;
	for (;;)
	{
		Latch	   *wl;
		uint64		seq = 0;

		LWLockAcquire(slot->lock, LW_EXCLUSIVE);
		if (slot->head - slot->tail < (uint64) ledger_shared->queue_size)
		{
			seq = ++slot->next_seq;
			rec->seq = seq;
			memcpy(&ledger_ring(slot)[slot->head % ledger_shared->queue_size],
				   rec, sizeof(LedgerRecord));
			slot->head++;
		}
		wl = slot->worker_latch;
		LWLockRelease(slot->lock);
		if (wl)
			SetLatch(wl);
		if (seq != 0)
			return seq;

		/* full: the worker is behind, or gone */
		if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(), maester_ledger_timeout_ms))
			ereport(ERROR,
					(errcode(ERRCODE_MAESTER_LEDGER_UNAVAILABLE),
					 errmsg("the usage ledger queue of this database is full"),
					 errhint("Raise maester.ledger_queue_size, or check that the ledger worker runs.")));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 5, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Queue `rec` if there is room, without waiting or throwing (for error and
 * exit paths); false when the ring is full.
 */
bool
ledger_try_enqueue(LedgerSlot *slot, LedgerRecord *rec)
{
	Latch	   *wl;
	bool		queued = false;

	rec->procno = MyProc ? MyProc->pgprocno : 0;
	rec->backend_pid = MyProcPid;
	rec->epoch = ledger_shared->epoch;
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	if (slot->head - slot->tail < (uint64) ledger_shared->queue_size)
	{
		rec->seq = ++slot->next_seq;
		memcpy(&ledger_ring(slot)[slot->head % ledger_shared->queue_size],
			   rec, sizeof(LedgerRecord));
		slot->head++;
		queued = true;
	}
	wl = slot->worker_latch;
	LWLockRelease(slot->lock);
	if (wl)
		SetLatch(wl);
	return queued;
}

/*
 * Queue the `n` spans of a call for the span writer, under one lock and
 * without waiting; returns how many fit (the others are counted as
 * dropped).
 */
int
span_enqueue(LedgerSlot *slot, LedgerRecord *recs, int n)
{
	Latch	   *wl;
	uint64		before;
	int			queued = 0;

	for (int i = 0; i < n; i++)
	{
		recs[i].backend_pid = MyProcPid;
		recs[i].epoch = ledger_shared->epoch;
	}
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	before = slot->span_head - slot->span_tail;
	while (queued < n &&
		   slot->span_head - slot->span_tail < (uint64) ledger_shared->queue_size)
	{
		memcpy(&span_ring(slot)[slot->span_head % ledger_shared->queue_size],
			   &recs[queued], sizeof(LedgerRecord));
		slot->span_head++;
		queued++;
	}
	slot->spans_dropped += n - queued;

	/*
	 * Wake the writer for the first spans after it emptied the queue (it
	 * then gathers for SPAN_NAP_MS), and when the queue is half full.
	 */
	wl = (before == 0 ||
		  slot->span_head - slot->span_tail >= (uint64) ledger_shared->queue_size / 2)
		? slot->span_latch : NULL;
	LWLockRelease(slot->lock);
	if (wl)
		SetLatch(wl);
	return queued;
}

/* The highest sequence number the worker has made durable */
uint64
ledger_durable_seq(LedgerSlot *slot)
{
	uint64		durable;

	LWLockAcquire(slot->lock, LW_SHARED);
	durable = slot->durable_seq;
	LWLockRelease(slot->lock);
	return durable;
}

/*
 * Wait until record `seq` is committed.  Returns true when it is; after
 * maester.ledger_timeout_ms raises MG006 when `must`, else returns false
 * (the record stays queued and is written when the worker is back).
 */
bool
ledger_wait_durable(LedgerSlot *slot, uint64 seq, bool must)
{
	TimestampTz start = 0;

	for (;;)
	{
		uint64		durable;

		LWLockAcquire(slot->lock, LW_SHARED);
		durable = slot->durable_seq;
		LWLockRelease(slot->lock);
		if (durable >= seq)
			return true;

		if (start == 0)
			start = GetCurrentTimestamp();
		else if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(), maester_ledger_timeout_ms))
		{
			if (must)
				ereport(ERROR,
						(errcode(ERRCODE_MAESTER_LEDGER_UNAVAILABLE),
						 errmsg("the usage ledger did not confirm the call within %d ms",
								maester_ledger_timeout_ms),
						 errdetail("Nothing was sent to the provider.")));
			return false;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}
