/*-------------------------------------------------------------------------
 *
 * walledger.c
 *	  Ledger records made durable by the backends that make them, as WAL
 *	  records, so that the resident worker's commits need not wait for a
 *	  flush.
 *
 * Before, a call waited twice for the resident worker to commit a ledger
 * row with synchronous commit: the worker's statement, its commit and
 * its WAL flush, one after the other, on every call's path.  Now a
 * backend queueing a PENDING or SETTLE record also writes it to WAL as a
 * non-transactional logical message (LogLogicalMessage: it survives the
 * caller's ROLLBACK and needs no wal_level = logical), and flushes it
 * itself (and waits for synchronous standbys, as a commit would) while
 * the worker inserts the row and commits with synchronous_commit off.
 * The caller still waits until the row is committed -- visible, and in
 * the dead letter table's care if it was refused -- but no longer for the
 * worker's flush: the flush and the worker's statement run side by side.
 *
 * A crash can lose the worker's last asynchronous commits, never the
 * messages.  So each database's worker keeps a physical replication
 * slot, maester_ledger_<database oid>, whose restart_lsn is a point
 * before which every maester message of the database has its row
 * durably written: the slot keeps the WAL after it, and a worker that
 * starts reads that WAL back (the WAL reader, read_local_xlog_page) and
 * writes every record again -- idempotently: INSERT ... ON CONFLICT DO
 * NOTHING for PENDING, an UPDATE to the same values for SETTLE -- before
 * stale PENDING rows are marked orphaned.
 *
 * The slot's restart_lsn moves (every WAL_ADVANCE_MS) to the end of the
 * last message whose batch's commit is flushed (by the WAL writer, or by
 * the worker when that took more than WAL_FORCE_MS), or, when the ring is
 * empty and every batch is flushed, to the current WAL position: a
 * backend writes its message and queues its record under the slot's
 * lock, so the ring holds every message written before that position
 * that is not yet written.  It is saved to disk every WAL_SAVE_MS and at
 * every checkpoint; after a crash, the saved one is older, and the replay
 * reads more, idempotently.
 *
 * Without a slot (max_replication_slots is 0 or all are used, wal_level
 * is minimal, or maester.ledger_wal is off), and while synchronous
 * standbys are configured (synchronous_standby_names), records are made durable by
 * the worker's synchronous commits, as before.  Turning maester.ledger_wal
 * off drops the slot once every row is durable: a slot left behind would
 * keep WAL, and PostgreSQL refuses to start with wal_level = minimal while
 * a physical slot exists.  A record the worker
 * queues itself (a job's call), or that is queued on an error path
 * (ledger_try_enqueue), has no message, and the batch holding it is
 * committed synchronously.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xlogreader.h"
#include "access/xlogutils.h"
#include "common/hmac.h"
#include "miscadmin.h"
#include "port.h"
#include "postmaster/interrupt.h"
#include "replication/message.h"
#include "replication/slot.h"
#include "replication/syncrep.h"
#include "storage/fd.h"
#include <sys/stat.h>
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "nodes/pg_list.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "settings.h"
#include "walledger.h"

#define WAL_LEDGER_PREFIX "maester.ledger"
#define WAL_ADVANCE_MS 50
#define WAL_SAVE_MS 10000
#define WAL_FORCE_MS 1000
#define WAL_REPLAY_BATCH 256
#define WAL_PENDING_MAX 64
#define WAL_KEY_FILE "maester_ledger.key"
#define WAL_KEY_LEN 32
#define WAL_MAC_LEN 32			/* HMAC-SHA-256 */

/* batches committed asynchronously whose commit may not be flushed yet */
typedef struct PendingBatch
{
	XLogRecPtr	commit_end;
	XLogRecPtr	msg_end;		/* the end of its last message */
} PendingBatch;

static PendingBatch Pending[WAL_PENDING_MAX];
static int	NPending = 0;
static bool HaveSlot = false;	/* this worker holds its database's slot */
static TimestampTz LastAdvance = 0;
static TimestampTz LastSave = 0;
static TimestampTz LastForce = 0;
static uint8 *WalKey = NULL;	/* in shared memory, set by the postmaster */

/*
 * A record in WAL is its bytes with each string field cut after its NUL
 * (a record is about 3 kB, mostly unused string room; cut, about 500
 * bytes).  The string fields, in the order of LedgerRecord; every other
 * byte is copied as it is.
 */
#define STRING_FIELD(f) {offsetof(LedgerRecord, f), sizeof(((LedgerRecord *) 0)->f)}
static const struct
{
	uint16		off;
	uint16		size;
}			StringFields[] =
{
	STRING_FIELD(tenant), STRING_FIELD(role), STRING_FIELD(trace_id),
	STRING_FIELD(prompt_hash), STRING_FIELD(prompt_name), STRING_FIELD(prompt_version),
	STRING_FIELD(provider), STRING_FIELD(requested_model), STRING_FIELD(model),
	STRING_FIELD(model_name), STRING_FIELD(status), STRING_FIELD(error_class),
	STRING_FIELD(purpose), STRING_FIELD(cost), STRING_FIELD(estimate),
	STRING_FIELD(service_tier), STRING_FIELD(tags), STRING_FIELD(eval_status),
	STRING_FIELD(finish_reason), STRING_FIELD(provider_finish_reason),
	STRING_FIELD(provider_request_id), STRING_FIELD(route_strategy),
	STRING_FIELD(route_reason), STRING_FIELD(cache), STRING_FIELD(saved)
};

static bool read_or_make_key(uint8 *key);

/*
 * The key ledger messages are signed with, kept in the data directory
 * (WAL_KEY_FILE, 0600) so that it outlives restarts: anyone may write a
 * logical message with our prefix, only the server can sign it.  Read,
 * or made, by the postmaster at shared memory init; false (records are
 * then made durable by the worker's commits) when it cannot be.
 */
bool
wal_ledger_key(uint8 *key)
{
	WalKey = NULL;
	if (!read_or_make_key(key))
		return false;
	WalKey = key;
	return true;
}

static bool
read_or_make_key(uint8 *key)
{
	char		tmp[MAXPGPATH];
	int			fd;
	int			n;

	fd = OpenTransientFile(WAL_KEY_FILE, O_RDONLY | PG_BINARY);
	if (fd >= 0)
	{
		n = read(fd, key, WAL_KEY_LEN);
		CloseTransientFile(fd);
		if (n == WAL_KEY_LEN)
			return true;
		ereport(WARNING,
				(errmsg("maester: file \"%s\" does not hold a key; remove it to make a new one", WAL_KEY_FILE)));
		return false;
	}
	if (!pg_strong_random(key, WAL_KEY_LEN))
		return false;
	snprintf(tmp, sizeof(tmp), "%s.tmp", WAL_KEY_FILE);
	fd = OpenTransientFilePerm(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, S_IRUSR | S_IWUSR);
	if (fd < 0)
	{
		ereport(WARNING, (errcode_for_file_access(), errmsg("maester: could not create file \"%s\": %m", tmp)));
		return false;
	}
	n = write(fd, key, WAL_KEY_LEN);
	if (n != WAL_KEY_LEN || pg_fsync(fd) != 0)
	{
		ereport(WARNING, (errcode_for_file_access(), errmsg("maester: could not write file \"%s\": %m", tmp)));
		CloseTransientFile(fd);
		return false;
	}
	CloseTransientFile(fd);
	return durable_rename(tmp, WAL_KEY_FILE, WARNING) == 0;
}

/* The MAC of `len` bytes of `data` into `mac` (WAL_MAC_LEN bytes) */
static bool
sign(const char *data, Size len, uint8 *mac)
{
	static ResourceOwner own = NULL;
	ResourceOwner was = CurrentResourceOwner;
	pg_hmac_ctx *ctx;
	bool		ok;

	if (WalKey == NULL)
		return false;
	/* OpenSSL's contexts are tracked by a resource owner: the worker may have none */
	if (CurrentResourceOwner == NULL)
	{
		if (own == NULL)
			own = ResourceOwnerCreate(NULL, "maester ledger signature");
		CurrentResourceOwner = own;
	}
	ctx = pg_hmac_create(PG_SHA256);
	ok = ctx != NULL &&
		pg_hmac_init(ctx, WalKey, WAL_KEY_LEN) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) data, len) == 0 &&
		pg_hmac_final(ctx, mac, WAL_MAC_LEN) == 0;
	if (ctx != NULL)
		pg_hmac_free(ctx);
	CurrentResourceOwner = was;
	return ok;
}

/* Is the message `msg` (`len` bytes, its MAC last) one we signed? */
static bool
signed_by_us(const char *msg, Size len)
{
	uint8		mac[WAL_MAC_LEN];
	uint8		diff = 0;

	if (len <= WAL_MAC_LEN || !sign(msg, len - WAL_MAC_LEN, mac))
		return false;
	for (int i = 0; i < WAL_MAC_LEN; i++)
		diff |= mac[i] ^ (uint8) msg[len - WAL_MAC_LEN + i];
	return diff == 0;
}

/* `rec` into `buf` (room for a whole record); returns the bytes used */
static Size
record_pack(const LedgerRecord *rec, char *buf)
{
	const char *src = (const char *) rec;
	Size		at = 0;
	Size		len = 0;

	for (int i = 0; i < lengthof(StringFields); i++)
	{
		Size		off = StringFields[i].off;
		Size		n = strnlen(src + off, StringFields[i].size - 1);

		Assert(off >= at);
		memcpy(buf + len, src + at, off - at);
		len += off - at;
		memcpy(buf + len, src + off, n);
		buf[len + n] = '\0';
		len += n + 1;
		at = off + StringFields[i].size;
	}
	memcpy(buf + len, src + at, sizeof(LedgerRecord) - at);
	return len + sizeof(LedgerRecord) - at;
}

/* `len` bytes of `buf` into `rec`; false if they are not a packed record */
static bool
record_unpack(const char *buf, Size len, LedgerRecord *rec)
{
	char	   *dst = (char *) rec;
	Size		at = 0;
	Size		pos = 0;

	memset(rec, 0, sizeof(LedgerRecord));
	for (int i = 0; i < lengthof(StringFields); i++)
	{
		Size		off = StringFields[i].off;
		Size		n;

		if (pos + (off - at) > len)
			return false;
		memcpy(dst + at, buf + pos, off - at);
		pos += off - at;
		n = strnlen(buf + pos, Min(len - pos, StringFields[i].size));
		if (n >= StringFields[i].size || pos + n >= len)
			return false;		/* no NUL within the field's room */
		memcpy(dst + off, buf + pos, n);
		pos += n + 1;
		at = off + StringFields[i].size;
	}
	if (len - pos != sizeof(LedgerRecord) - at)
		return false;
	memcpy(dst + at, buf + pos, sizeof(LedgerRecord) - at);
	return true;
}

/*
 * In a PG_CATCH: the error, its transaction aborted, and with `release`
 * the replication slot released; a cancel or a shutdown goes on up.
 */
static ErrorData *
caught(MemoryContext cxt, bool release)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortOutOfAnyTransaction();
	if (release && MyReplicationSlot != NULL)
		ReplicationSlotRelease();
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
		ReThrowError(edata);
	return edata;
}

static void
slot_name(char *name, Oid dboid)
{
	snprintf(name, NAMEDATALEN, "maester_ledger_%u", dboid);
}

/*
 * A backend: write `rec` to WAL (under the slot's lock, see the header);
 * returns the end of the message.  Not flushed yet: wal_ledger_flush.
 */
XLogRecPtr
wal_ledger_log(LedgerRecord *rec)
{
	static char buf[sizeof(LedgerRecord) + WAL_MAC_LEN];
	Size		len;

	rec->layout = LEDGER_RECORD_LAYOUT;
	rec->lsn = 0;
	len = record_pack(rec, buf);
	if (!sign(buf, len, (uint8 *) buf + len))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not sign a ledger record")));
	return LogLogicalMessage(WAL_LEDGER_PREFIX, buf, len + WAL_MAC_LEN, false);
}

/* A backend: make its message durable, as a commit would be */
void
wal_ledger_flush(XLogRecPtr lsn)
{
	XLogFlush(lsn);
	SyncRepWaitForLSN(lsn, false);
}

/*
 * Are synchronous standbys configured?  Then the worker's commits wait
 * for them, as before (wal_ready stays off): a backend's message reaches
 * a standby, but a row committed asynchronously may not have when the
 * standby is promoted, and the new primary's worker (with a new slot)
 * would not replay it.
 */
bool
wal_ledger_sync_standbys(void)
{
	return SyncRepStandbyNames != NULL && SyncRepStandbyNames[0] != '\0';
}

/*
 * Read back the WAL from `from` to `end`: every ledger message of this
 * database signed with this server's key goes to `apply`, a batch at a
 * time.  Returns where it stopped: `end`, or where WAL could not be read
 * (with a WARNING: rows after it may be missing), or InvalidXLogRecPtr
 * when the worker is asked to stop (the next one reads it all again).
 */
static XLogRecPtr
replay(XLogRecPtr from, XLogRecPtr end, WalLedgerApply apply, void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ReadLocalXLogPageNoWaitPrivate *priv = palloc0(sizeof(ReadLocalXLogPageNoWaitPrivate));
	LedgerRecord *batch = palloc(sizeof(LedgerRecord) * WAL_REPLAY_BATCH);
	XLogReaderState *volatile xr = NULL;
	volatile XLogRecPtr reached = from;
	volatile int64 total = 0;
	volatile int64 unsigned_msgs = 0;
	volatile int64 skipped = 0;
	volatile bool stopped = false;

	if (from >= end)
		return end;
	PG_TRY();
	{
		XLogRecPtr	first;
		int			n = 0;

		xr = XLogReaderAllocate(wal_segment_size, NULL,
								XL_ROUTINE(.page_read = &read_local_xlog_page_no_wait,
										   .segment_open = &wal_segment_open,
										   .segment_close = &wal_segment_close),
								priv);
		if (xr == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory"),
					 errdetail("Failed while allocating a WAL reading processor.")));
		first = XLogFindNextRecord(xr, from);
		if (XLogRecPtrIsInvalid(first))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("no WAL record after %X/%X", LSN_FORMAT_ARGS(from))));
		XLogBeginRead(xr, first);
		for (;;)
		{
			char	   *errormsg = NULL;
			xl_logical_message *m;
			Size		len;

			CHECK_FOR_INTERRUPTS();
			if (ShutdownRequestPending)
			{
				stopped = true;
				break;
			}
			if (XLogReadRecord(xr, &errormsg) == NULL)
			{
				if (errormsg)
					ereport(ERROR,
							(errcode(ERRCODE_DATA_CORRUPTED),
							 errmsg("could not read WAL at %X/%X: %s",
									LSN_FORMAT_ARGS(xr->EndRecPtr), errormsg)));
				break;			/* the end of WAL */
			}
			if (xr->ReadRecPtr >= end)
				break;
			reached = xr->ReadRecPtr;
			if (XLogRecGetRmid(xr) != RM_LOGICALMSG_ID ||
				(XLogRecGetInfo(xr) & ~XLR_INFO_MASK) != XLOG_LOGICAL_MESSAGE)
				continue;
			m = (xl_logical_message *) XLogRecGetData(xr);
			if (m->dbId != MyDatabaseId || m->transactional ||
				m->prefix_size != sizeof(WAL_LEDGER_PREFIX) ||
				strcmp(m->message, WAL_LEDGER_PREFIX) != 0)
				continue;
			len = m->message_size;
			if (XLogRecGetDataLen(xr) < offsetof(xl_logical_message, message) + m->prefix_size + len)
				continue;
			/* anyone may write a message (pg_logical_emit_message): ours are signed */
			if (!signed_by_us(m->message + m->prefix_size, len))
			{
				unsigned_msgs++;
				continue;
			}
			if (!record_unpack(m->message + m->prefix_size, len - WAL_MAC_LEN, &batch[n]) ||
				batch[n].layout != LEDGER_RECORD_LAYOUT)
			{
				skipped++;
				continue;
			}
			/* nobody waits for it: no sequence number, nobody to wake */
			batch[n].seq = 0;
			batch[n].procno = -1;
			batch[n].lsn = 0;
			n++;
			total++;
			if (n == WAL_REPLAY_BATCH)
			{
				apply(batch, n, arg);
				n = 0;
			}
		}
		if (n > 0 && !stopped)
			apply(batch, n, arg);
		if (!stopped)
			reached = end;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (xr != NULL)
			XLogReaderFree(xr);
		pfree(batch);
		edata = caught(cxt, false);
		ereport(WARNING,
				(errmsg("maester worker could not replay the ledger's WAL after %X/%X: %s",
						LSN_FORMAT_ARGS(reached), edata->message),
				 errdetail("Rows of calls made before the last crash, between %X/%X and %X/%X, may be missing from maester.usage.",
						   LSN_FORMAT_ARGS(reached), LSN_FORMAT_ARGS(end))));
		FreeErrorData(edata);
		return end;				/* not a reason to keep WAL forever */
	}
	PG_END_TRY();
	XLogReaderFree(xr);
	pfree(batch);
	if (stopped)
		return InvalidXLogRecPtr;
	if (unsigned_msgs > 0)
		ereport(WARNING,
				(errmsg("maester worker ignored " INT64_FORMAT " ledger messages in WAL not signed with this server's key",
						unsigned_msgs),
				 errdetail("Someone wrote messages with the prefix \"%s\" (pg_logical_emit_message); they were not written to maester.usage.",
						   WAL_LEDGER_PREFIX)));
	if (skipped > 0)
		ereport(WARNING,
				(errmsg("maester worker skipped " INT64_FORMAT " ledger records in WAL written by another maester library",
						skipped),
				 errdetail("Their layout is not this library's; their rows may be missing from maester.usage.")));
	ereport(LOG,
			(errmsg("maester worker replayed " INT64_FORMAT " ledger records from WAL, %X/%X to %X/%X",
					total, LSN_FORMAT_ARGS(from), LSN_FORMAT_ARGS(end))));
	return end;
}

/*
 * The first position at or after `from` whose WAL segment is still there.
 * A checkpoint removes WAL up to the slot's restart_lsn in memory, which
 * may be a little ahead of the one saved to disk: after a crash, the
 * saved one can point into a removed segment, whose records were all
 * written already (the slot had passed them).
 */
static XLogRecPtr
first_present(XLogRecPtr from, XLogRecPtr end)
{
	TimeLineID	tli = GetWALInsertionTimeLine();
	XLogSegNo	seg;
	XLogSegNo	endseg;
	XLogRecPtr	at = from;

	XLByteToSeg(from, seg, wal_segment_size);
	XLByteToSeg(end, endseg, wal_segment_size);
	for (; seg < endseg; seg++)
	{
		char		path[MAXPGPATH];
		struct stat st;

		XLogFilePath(path, tli, seg, wal_segment_size);
		if (stat(path, &st) == 0)
			break;
		XLogSegNoOffsetToRecPtr(seg + 1, 0, wal_segment_size, at);
	}
	if (at != from)
		ereport(LOG,
				(errmsg("maester worker reads the ledger's WAL from %X/%X, the first segment still there (its slot says %X/%X)",
						LSN_FORMAT_ARGS(at), LSN_FORMAT_ARGS(from))));
	return at;
}

/* Move the slot's restart_lsn to `lsn` (never back) */
static void
slot_move(XLogRecPtr lsn, bool save)
{
	if (lsn <= MyReplicationSlot->data.restart_lsn)
		return;
	SpinLockAcquire(&MyReplicationSlot->mutex);
	MyReplicationSlot->data.restart_lsn = lsn;
	SpinLockRelease(&MyReplicationSlot->mutex);
	ReplicationSlotMarkDirty();
	ReplicationSlotsComputeRequiredLSN();
	if (save)
	{
		ReplicationSlotSave();
		LastSave = GetCurrentTimestamp();
	}
}

/*
 * Drop the slot this worker holds, once every row is durable (the caller
 * wrote what the ring held after backends stopped writing messages):
 * with maester.ledger_wal off no slot stays behind, so that nothing
 * keeps WAL and wal_level may be lowered to minimal.
 */
static void
drop_own(void)
{
	char		name[NAMEDATALEN];
	MemoryContext cxt = CurrentMemoryContext;

	XLogFlush(GetXLogInsertRecPtr());
	NPending = 0;
	HaveSlot = false;
	ReplicationSlotRelease();
	slot_name(name, MyDatabaseId);
	PG_TRY();
	{
		StartTransactionCommand();
		ReplicationSlotDrop(name, true);
		CommitTransactionCommand();
		ereport(LOG,
				(errmsg("maester worker dropped replication slot \"%s\": maester.ledger_wal is off", name)));
	}
	PG_CATCH();
	{
		ErrorData  *edata = caught(cxt, true);

		ereport(LOG,
				(errmsg("maester worker could not drop replication slot \"%s\": %s", name, edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
}

/*
 * Take the database's slot, or create it (with maester.ledger_wal on),
 * and when it was there, write again what its WAL holds.  Without a slot,
 * WARNs why, once.
 */
static void
take_slot(WalLedgerApply apply, void *arg)
{
	static bool told = false;
	char		name[NAMEDATALEN];
	MemoryContext cxt = CurrentMemoryContext;

	slot_name(name, MyDatabaseId);
	PG_TRY();
	{
		StartTransactionCommand();
		if (SearchNamedReplicationSlot(name, true) != NULL)
		{
			XLogRecPtr	from;
			XLogRecPtr	to;
			XLogRecPtr	end;
			XLogRecPtr	oldest;

			ReplicationSlotAcquire(name, true);
			from = MyReplicationSlot->data.restart_lsn;
			CommitTransactionCommand();
			MemoryContextSwitchTo(cxt);
			HaveSlot = true;
			/* an earlier worker's asynchronous commits are made durable first */
			XLogFlush(GetXLogInsertRecPtr());
			end = GetFlushRecPtr(NULL);
			if (XLogRecPtrIsInvalid(from))
			{
				ereport(WARNING,
						(errmsg("replication slot \"%s\" of the ledger was invalidated", name),
						 errdetail("max_slot_wal_keep_size let WAL it kept be removed; rows of calls made before the last crash may be missing from maester.usage.")));
				from = end;
			}
			/* (WAL before a removed segment held only rows already durable) */
			XLogSegNoOffsetToRecPtr(XLogGetLastRemovedSegno() + 1, 0, wal_segment_size, oldest);
			from = first_present(Max(from, oldest), end);
			to = replay(from, end, apply, arg);
			/* what was replayed is committed synchronously: durable */
			if (!XLogRecPtrIsInvalid(to))
				slot_move(to, true);
		}
		else if (maester_ledger_wal)
		{
			/* max_replication_slots > 0, wal_level replica or logical */
			CheckSlotRequirements();
			ReplicationSlotCreate(name, false, RS_PERSISTENT, false);
			ReplicationSlotReserveWal();
			ReplicationSlotMarkDirty();
			ReplicationSlotSave();
			CommitTransactionCommand();
			HaveSlot = true;
			ereport(LOG,
					(errmsg("maester worker created replication slot \"%s\" for the ledger's WAL records",
							name)));
		}
		else
			CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata = caught(cxt, true);

		HaveSlot = false;
		NPending = 0;
		if (!told)
			ereport(WARNING,
					(errmsg("maester worker for database %u makes the ledger durable by its own commits: %s",
							MyDatabaseId, edata->message),
					 errhint("A call then waits for the worker's WAL flush; maester.ledger_wal needs a free replication slot (max_replication_slots) and wal_level replica or logical.")));
		told = true;
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	LastAdvance = GetCurrentTimestamp();
	LastSave = LastAdvance;
}

/*
 * The resident worker, at start and after a reload: take the database's
 * slot (take_slot) unless it holds it; with maester.ledger_wal off, then
 * drop it.  Returns whether backends may make their records durable
 * themselves (slot->wal_ready).
 */
bool
wal_ledger_start(WalLedgerApply apply, void *arg)
{
	if (RecoveryInProgress())
		return false;			/* a standby writes no ledger */
	if (!HaveSlot)
		take_slot(apply, arg);
	if (HaveSlot && !maester_ledger_wal)
		drop_own();
	return HaveSlot && WalKey != NULL && !wal_ledger_sync_standbys();
}

/*
 * The resident worker committed a batch asynchronously: its commit ends
 * at `commit_end`, its last message at `msg_end`.
 */
void
wal_ledger_applied(XLogRecPtr commit_end, XLogRecPtr msg_end)
{
	if (!HaveSlot)
		return;
	if (NPending == WAL_PENDING_MAX)
	{
		/* rare: flush, and remember only this batch */
		XLogFlush(commit_end);
		NPending = 0;
	}
	Pending[NPending].commit_end = commit_end;
	Pending[NPending].msg_end = msg_end;
	NPending++;
}

/* The resident worker, each round: move the slot on (see the header) */
void
wal_ledger_advance(LedgerSlot *slot)
{
	TimestampTz now;
	XLogRecPtr	flushed;
	XLogRecPtr	target = InvalidXLogRecPtr;
	int			i = 0;

	if (!HaveSlot)
		return;
	now = GetCurrentTimestamp();
	if (!TimestampDifferenceExceeds(LastAdvance, now, WAL_ADVANCE_MS))
		return;
	LastAdvance = now;
	/* the WAL writer flushes asynchronous commits; if it is slow, we do */
	if (NPending > 0 && TimestampDifferenceExceeds(LastForce, now, WAL_FORCE_MS))
	{
		XLogFlush(Pending[NPending - 1].commit_end);
		LastForce = now;
	}
	flushed = GetFlushRecPtr(NULL);
	while (i < NPending && Pending[i].commit_end <= flushed)
		target = Pending[i++].msg_end;
	if (i > 0)
	{
		memmove(Pending, Pending + i, sizeof(PendingBatch) * (NPending - i));
		NPending -= i;
	}
	if (NPending == 0)
	{
		XLogRecPtr	insert = InvalidXLogRecPtr;

		LWLockAcquire(slot->lock, LW_SHARED);
		if (slot->head == slot->tail)
			insert = GetXLogInsertRecPtr();
		LWLockRelease(slot->lock);
		if (!XLogRecPtrIsInvalid(insert))
			target = Max(target, Min(insert, flushed));
	}
	if (!XLogRecPtrIsInvalid(target))
		slot_move(target, TimestampDifferenceExceeds(LastSave, now, WAL_SAVE_MS));
}

/* The resident worker, on its way out: its slot is free for the next */
void
wal_ledger_release(void)
{
	/* its own asynchronous commits are durable before the next worker reads */
	if (HaveSlot)
		XLogFlush(GetXLogInsertRecPtr());
	if (MyReplicationSlot != NULL)
		ReplicationSlotRelease();
	HaveSlot = false;
}

/* Does this worker hold its database's slot (so that it may commit asynchronously)? */
bool
wal_ledger_holding(void)
{
	return HaveSlot;
}

/*
 * The launcher, each pass: the databases of the ledger's slots that no
 * process holds.  It drops those whose database is gone: a slot whose
 * first drop failed, or left from a server life in which its database
 * was dropped while no worker ran, would keep WAL forever.
 */
List *
wal_ledger_idle_slot_dbs(void)
{
	List	   *dbs = NIL;

	if (max_replication_slots <= 0 || ReplicationSlotCtl == NULL)
		return NIL;
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (int i = 0; i < max_replication_slots; i++)
	{
		ReplicationSlot *rs = &ReplicationSlotCtl->replication_slots[i];
		unsigned int dboid;
		char		rest;
		pid_t		active;

		if (!rs->in_use)
			continue;
		SpinLockAcquire(&rs->mutex);
		active = rs->active_pid;
		SpinLockRelease(&rs->mutex);
		if (active == 0 &&
			sscanf(NameStr(rs->data.name), "maester_ledger_%u%c", &dboid, &rest) == 1)
			dbs = lappend_oid(dbs, (Oid) dboid);
	}
	LWLockRelease(ReplicationSlotControlLock);
	return dbs;
}

/*
 * The launcher: drop the slot of a database that is gone or has no
 * maester any more (it would keep WAL forever).  A failure is a LOG line.
 */
void
wal_ledger_drop(Oid dboid)
{
	char		name[NAMEDATALEN];
	MemoryContext cxt = CurrentMemoryContext;

	slot_name(name, dboid);
	if (SearchNamedReplicationSlot(name, true) == NULL)
		return;
	PG_TRY();
	{
		StartTransactionCommand();
		ReplicationSlotDrop(name, true);
		CommitTransactionCommand();
		ereport(LOG, (errmsg("maester launcher dropped replication slot \"%s\"", name)));
	}
	PG_CATCH();
	{
		ErrorData  *edata = caught(cxt, true);

		ereport(LOG,
				(errmsg("maester launcher could not drop replication slot \"%s\": %s",
						name, edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
}
