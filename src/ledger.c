/*-------------------------------------------------------------------------
 *
 * ledger.c
 *	  The slots of the databases in shared memory: the usage ledger's
 *	  queue, the spans' queue, and how a database gets its slot.
 *
 * Why a worker writes the ledger: a row the caller wrote itself would die
 * with its ROLLBACK, and a backend killed mid-call would leave nothing.
 * So the caller never writes the ledger.  For every attempt it queues a
 * PENDING record (with the attempt's worst-case cost) and waits until the
 * database's resident worker (resident.c) has committed it -- only then
 * does the request leave; afterwards it queues the SETTLE record and waits
 * again, so that a call that returned is on disk.  The worker commits
 * whatever is queued in one transaction (group commit), so concurrent
 * callers share commits.  What makes a record durable is, when the
 * database's worker holds its replication slot, the record's own WAL
 * message, which the caller flushes itself while the worker writes the
 * row (walledger.c); otherwise the worker's synchronous commit.
 *
 * Shared memory: LedgerShared, then maester.max_databases slots, each a
 * LedgerSlot followed by two rings: maester.ledger_queue_size fixed-size
 * ledger records, and maester.span_queue_size kB of spans of varying size
 * (a full span ring drops spans, never calls).
 *
 * Slots.  A database's slot is claimed by its first caller (or by the
 * launcher for a database it knows uses maester) with slot_claim(): under
 * the claim lock, the database's own slot if it has one, else the first
 * free one -- never a second slot for the same database.  The launcher
 * frees the slot of a database that is gone once none of its workers run.
 *
 * Locks: the claim lock, then a slot's lock; never two slot locks at once.
 * Backends copy records in under the slot lock; the resident worker reads
 * head and tail under it and copies [tail, head) out without it (backends
 * never write there until the worker advances tail).  A backend waits for
 * durability on its own latch, which the worker sets after each commit.
 *
 * Fail closed: when no worker serves the database within
 * maester.ledger_timeout_ms, a call fails (MG006) before anything is sent;
 * when the launcher could not start one (no background worker slot), the
 * call fails at once, saying so.
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
#include "walledger.h"

LedgerShared *ledger_shared = NULL;

static LedgerSlot *MySlot = NULL;

/* The size of a slot with its two rings */
static Size
slot_size(void)
{
	return MAXALIGN(add_size(add_size(MAXALIGN(sizeof(LedgerSlot)),
									  MAXALIGN(mul_size(sizeof(LedgerRecord),
														maester_ledger_queue_size))),
							 mul_size(maester_span_queue_kb, 1024)));
}

Size
ledger_shmem_size(void)
{
	return add_size(MAXALIGN(offsetof(LedgerShared, slots)),
					mul_size(slot_size(), maester_max_databases));
}

/* LWLocks of the "maester ledger" tranche: one per slot, and the claim lock */
int
ledger_lwlocks(void)
{
	return maester_max_databases + 1;
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
		ledger_shared->span_bytes = (Size) maester_span_queue_kb * 1024;
		ledger_shared->slot_size = slot_size();
		ledger_shared->claim_lock = &locks[maester_max_databases].lock;
		(void) wal_ledger_key(ledger_shared->wal_key);	/* none: no WAL records */
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

char *
span_ring(LedgerSlot *slot)
{
	return (char *) ledger_ring(slot) +
		MAXALIGN(sizeof(LedgerRecord) * ledger_shared->queue_size);
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

/* Wake the launcher (it starts the workers of slots that have none) */
void
wake_launcher(void)
{
	Latch	   *l = ledger_shared->launcher_latch;

	if (l)
		SetLatch(l);
}

/* The slot of database `dboid`, or NULL; claims nothing */
LedgerSlot *
slot_find(Oid dboid)
{
	LedgerSlot *found = NULL;

	LWLockAcquire(ledger_shared->claim_lock, LW_SHARED);
	for (int i = 0; i < ledger_shared->nslots && found == NULL; i++)
		if (ledger_slot(i)->dboid == dboid)
			found = ledger_slot(i);
	LWLockRelease(ledger_shared->claim_lock);
	return found;
}

/*
 * The slot of database `dboid`: its own if it has one, else the first free
 * one, claimed; NULL when every slot belongs to another database.
 */
LedgerSlot *
slot_claim(Oid dboid)
{
	LedgerSlot *found = NULL;
	LedgerSlot *free_slot = NULL;

	LWLockAcquire(ledger_shared->claim_lock, LW_EXCLUSIVE);
	for (int i = 0; i < ledger_shared->nslots && found == NULL; i++)
	{
		LedgerSlot *slot = ledger_slot(i);

		if (slot->dboid == dboid)
			found = slot;
		else if (slot->dboid == InvalidOid && free_slot == NULL)
			free_slot = slot;
	}
	if (found == NULL && free_slot != NULL)
	{
		LWLockAcquire(free_slot->lock, LW_EXCLUSIVE);
		free_slot->dboid = dboid;
		LWLockRelease(free_slot->lock);
		found = free_slot;
	}
	LWLockRelease(ledger_shared->claim_lock);
	return found;
}

/*
 * Free the slot of `dboid` (a database that is gone, or has no maester)
 * if none of its workers runs; true when it was freed.  What its queues
 * held is discarded with it.
 */
bool
slot_free(LedgerSlot *slot, Oid dboid)
{
	LWLock	   *lock = slot->lock;
	bool		idle;

	LWLockAcquire(ledger_shared->claim_lock, LW_EXCLUSIVE);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	idle = slot->dboid == dboid && slot->worker_pid == 0 && slot->callback_pid == 0 &&
		slot->kb_pid == 0;
	for (int j = 0; j < MAESTER_MAX_JOB_WORKERS; j++)
		idle &= slot->job_pid[j] == 0;
	if (idle)
	{
		memset(slot, 0, sizeof(LedgerSlot));
		slot->lock = lock;
	}
	LWLockRelease(lock);
	LWLockRelease(ledger_shared->claim_lock);
	return idle;
}

/*
 * The slot of this database, claimed if need be, once its worker serves.
 * Waits up to maester.ledger_timeout_ms for the worker; raises MG006
 * (before anything is sent) when there is none, and 53400 at once when
 * the launcher could not start it.
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
		LedgerSlot *slot = slot_claim(MyDatabaseId);
		bool		ready;
		char		start_error[sizeof(((LedgerSlot *) NULL)->start_error)];

		if (slot == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("no free ledger slot for this database"),
					 errdetail("Each of the maester.max_databases = %d slots serves another database.",
							   maester_max_databases),
					 errhint("Raise maester.max_databases and restart the server.")));
		MySlot = slot;
		LWLockAcquire(slot->lock, LW_SHARED);
		ready = slot->ready;
		start_error[0] = '\0';
		if (!ready && slot->worker_pid == 0 && slot->start_error[0] != '\0' &&
			slot->start_error_at >= start)
			strlcpy(start_error, slot->start_error, sizeof(start_error));
		LWLockRelease(slot->lock);
		if (ready)
			return slot;
		if (start_error[0] != '\0')
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("the usage ledger of this database is not available"),
					 errdetail("%s; nothing was sent.", start_error),
					 errhint("Raise max_worker_processes (maester needs one worker per database that uses it, and the launcher) and restart the server.")));
		if (!woke)
		{
			wake_launcher();
			woke = true;
		}
		if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(), maester_ledger_timeout_ms))
			ereport(ERROR,
					(errcode(ERRCODE_MAESTER_LEDGER_UNAVAILABLE),
					 errmsg("the usage ledger of this database is not available"),
					 errdetail("No maester worker served the database within %d ms; nothing was sent.",
							   maester_ledger_timeout_ms),
					 errhint("Check the server log for the maester worker of this database.")));
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
		XLogRecPtr	lsn = 0;

		LWLockAcquire(slot->lock, LW_EXCLUSIVE);
		if (slot->head - slot->tail < (uint64) ledger_shared->queue_size)
		{
			/* in WAL in the ring's order (walledger.c), never the worker's own */
			lsn = slot->wal_ready && slot->worker_pid != MyProcPid ? wal_ledger_log(rec) : 0;
			rec->lsn = lsn;
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
		{
			/* durable while the worker writes the row */
			if (lsn != 0)
				wal_ledger_flush(lsn);
			return seq;
		}

		/* full: the worker is behind, or gone (or it is us: do not wait for ourselves) */
		if (slot->worker_pid == MyProcPid ||
			TimestampDifferenceExceeds(start, GetCurrentTimestamp(), maester_ledger_timeout_ms))
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
	rec->lsn = 0;				/* no message: the worker's commit makes it durable */
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
 * The span ring.  Records are copied in whole; one that does not fit
 * before the end of the ring leaves a skip record there and starts at the
 * beginning.  Returns the offset past the record, or 0 if it does not fit.
 */
static uint64
span_put(LedgerSlot *slot, const SpanRecord *r)
{
	Size		size = ledger_shared->span_bytes;
	char	   *ring = span_ring(slot);
	uint64		head = slot->span_head;
	Size		pos = head % size;
	Size		len = r->len;
	Size		pad = (pos + len > size) ? size - pos : 0;

	if ((slot->span_head - slot->span_tail) + pad + len > size)
		return 0;
	if (pad > 0)
	{
		SpanRecord *skip = (SpanRecord *) (ring + pos);

		skip->len = (uint32) pad;
		skip->skip = 1;
		head += pad;
		pos = 0;
	}
	memcpy(ring + pos, r, len);
	return head + len;
}

/*
 * How many of the `n` spans (in order) the ring has room for now; a hint
 * for the caller, who may mark a trace partial before queueing it.
 */
int
span_room(LedgerSlot *slot, SpanRecord **recs, int n)
{
	Size		size = ledger_shared->span_bytes;
	uint64		used;
	uint64		head;
	int			fit = 0;

	LWLockAcquire(slot->lock, LW_SHARED);
	used = slot->span_head - slot->span_tail;
	head = slot->span_head;
	LWLockRelease(slot->lock);
	for (; fit < n; fit++)
	{
		Size		pos = head % size;
		Size		pad = (pos + recs[fit]->len > size) ? size - pos : 0;

		if (used + pad + recs[fit]->len > size)
			break;
		used += pad + recs[fit]->len;
		head += pad + recs[fit]->len;
	}
	return fit;
}

/*
 * Queue the `n` spans of a call for the resident worker, under one lock
 * and without waiting; returns how many fit (the others are counted as
 * dropped).  The worker is woken for the first spans after it emptied the
 * ring (it then gathers for SPAN_NAP_MS), and when the ring is half full.
 */
int
span_enqueue(LedgerSlot *slot, SpanRecord **recs, int n)
{
	Latch	   *wl;
	uint64		before;
	int			queued = 0;

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	before = slot->span_head - slot->span_tail;
	while (queued < n)
	{
		uint64		next = span_put(slot, recs[queued]);

		if (next == 0)
			break;
		slot->span_head = next;
		queued++;
	}
	slot->spans_queued += queued;
	slot->spans_waiting += queued;
	slot->spans_dropped += n - queued;
	wl = (before == 0 || slot->span_head - slot->span_tail >= ledger_shared->span_bytes / 2)
		? slot->worker_latch : NULL;
	LWLockRelease(slot->lock);
	if (wl)
		SetLatch(wl);
	return queued;
}

/*
 * The resident worker: copy up to `max` whole span records (at most `size`
 * bytes) out of the ring into `buf` (skip records left out) and free their
 * room.  Returns the bytes copied.
 */
Size
span_take(LedgerSlot *slot, char *buf, Size size, int max)
{
	int			n = 0;
	Size		ringsize = ledger_shared->span_bytes;
	char	   *ring = span_ring(slot);
	uint64		tail;
	uint64		head;
	Size		copied = 0;

	LWLockAcquire(slot->lock, LW_SHARED);
	tail = slot->span_tail;
	head = slot->span_head;
	LWLockRelease(slot->lock);

	/* (copied without the lock: backends write only beyond head) */
	while (tail < head)
	{
		SpanRecord *r = (SpanRecord *) (ring + tail % ringsize);

		if (r->skip)
		{
			tail += r->len;
			continue;
		}
		if (copied + r->len > size || n >= max)
			break;
		memcpy(buf + copied, r, r->len);
		copied += r->len;
		tail += r->len;
		n++;
	}
	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	slot->span_tail = tail;
	slot->spans_waiting -= n;
	LWLockRelease(slot->lock);
	return copied;
}

/*
 * The resident worker: copy up to `max` waiting ledger records into
 * `batch`; *tail is where they start (the worker advances the slot's tail
 * past them once they are durable).  Returns how many.
 */
int
ledger_take(LedgerSlot *slot, LedgerRecord *batch, int max, uint64 *tail)
{
	int			n = 0;
	int			qsize = ledger_shared->queue_size;
	LedgerRecord *ring = ledger_ring(slot);
	uint64		head;

	LWLockAcquire(slot->lock, LW_SHARED);
	*tail = slot->tail;
	head = slot->head;
	LWLockRelease(slot->lock);

	/*
	 * Copied without the lock: backends write only beyond head, and not
	 * over [tail, head) until the worker advances tail; the lock taken
	 * above orders their writes before our reads.  (Holding the lock for a
	 * ring's worth of copying would stall every call of the database.)
	 */
	while (n < max && *tail + n < head)
	{
		memcpy(&batch[n], &ring[(*tail + n) % qsize], sizeof(LedgerRecord));
		n++;
	}
	return n;
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
 * Did durable record `seq` (a PENDING) go to maester.dead_letter instead
 * of maester.usage?  Asked once it is durable: the worker notes the dead
 * ones before it advances durable_seq past them.  A caller asking about a
 * record older than one pushed out of the list is told it is dead: the
 * call fails closed rather than going out unrecorded.
 */
bool
ledger_record_dead(LedgerSlot *slot, uint64 seq)
{
	bool		dead = false;

	LWLockAcquire(slot->lock, LW_SHARED);
	dead = seq <= slot->dead_overwritten;
	for (uint32 i = 0; i < Min(slot->ndead_pending, LEDGER_DEAD_KEPT) && !dead; i++)
		dead = slot->dead_pending[i] == seq;
	LWLockRelease(slot->lock);
	return dead;
}

/* Note that durable record `seq` (a PENDING) is dead: see ledger_record_dead */
void
ledger_note_dead(LedgerSlot *slot, uint64 seq)
{
	uint32		at;

	LWLockAcquire(slot->lock, LW_EXCLUSIVE);
	at = slot->ndead_pending % LEDGER_DEAD_KEPT;
	if (slot->ndead_pending >= LEDGER_DEAD_KEPT)
		slot->dead_overwritten = Max(slot->dead_overwritten, slot->dead_pending[at]);
	slot->dead_pending[at] = seq;
	slot->ndead_pending++;
	LWLockRelease(slot->lock);
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
