/*-------------------------------------------------------------------------
 *
 * export.h
 *	  OTLP export by the resident worker (export.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_EXPORT_H
#define MAESTER_EXPORT_H

#include "http.h"
#include "ledger.h"

typedef enum ExportState
{
	EXPORT_IDLE,				/* next_at: when to look for spans */
	EXPORT_POSTING,				/* req is in flight */
	EXPORT_BACKOFF				/* next_at: when to post again */
} ExportState;

typedef struct Exporter
{
	LedgerSlot *slot;
	bool		started;		/* watermark is set */
	ExportState state;
	int64		watermark;		/* spans after this seq are to be sent */
	int64		last;			/* the seq of the batch's last span */
	int			nspans;			/* of the batch */
	char	   *payload;
	char	   *url;
	int			attempt;
	TimestampTz next_at;
	HttpRequest req;
	bool		live;			/* req holds curl resources */
	MemoryContext cxt;			/* the batch */
} Exporter;

extern void export_init(Exporter *e, LedgerSlot *slot);
extern void export_step(Exporter *e);
extern long export_wait_ms(Exporter *e);
extern void export_abort(Exporter *e);

#endif							/* MAESTER_EXPORT_H */
