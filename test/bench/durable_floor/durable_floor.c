/*
 * durable_floor: a benchmark-only extension for test/bench/gateway.sh
 * (never installed by the product).  It measures what it would cost the
 * calling backend to make a ledger record durable itself, outside its own
 * transaction, instead of handing it to the resident worker: a WAL record
 * of `bytes` bytes written non-transactionally (a logical message, which
 * the transaction's abort cannot undo) and flushed, `n` times.  Returns
 * each one's latency in microseconds.
 *
 *   SELECT * FROM durable_floor(n, bytes);
 */
#include "postgres.h"

#include "access/xlog.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "replication/message.h"
#include "utils/tuplestore.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(durable_floor);

Datum
durable_floor(PG_FUNCTION_ARGS)
{
	int32		n = PG_GETARG_INT32(0);
	int32		bytes = PG_GETARG_INT32(1);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *record;

	if (n < 0 || bytes < 1 || bytes > 65536)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("durable_floor(n, bytes): n >= 0, bytes between 1 and 65536")));
	record = palloc(bytes);
	memset(record, 'x', bytes);
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	for (int i = 0; i < n; i++)
	{
		instr_time	start,
					end;
		Datum		value;
		bool		isnull = false;

		CHECK_FOR_INTERRUPTS();
		INSTR_TIME_SET_CURRENT(start);
		XLogFlush(LogLogicalMessage("maester-bench", record, bytes, false));
		INSTR_TIME_SET_CURRENT(end);
		INSTR_TIME_SUBTRACT(end, start);
		value = Float8GetDatum(INSTR_TIME_GET_MICROSEC(end));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &isnull);
	}
	return (Datum) 0;
}
