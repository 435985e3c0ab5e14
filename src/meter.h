/*-------------------------------------------------------------------------
 *
 * meter.h
 *	  The cost of a call at the price in force when it was made.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_METER_H
#define MAESTER_METER_H

#include "datatype/timestamp.h"
#include "utils/numeric.h"

extern void meter_init(void);
extern Numeric maester_cost(const char *const *names, int nnames, int64 input_tokens,
							int64 output_tokens, int64 cached_input_tokens,
							int64 cache_write_tokens, int64 cache_write_1h_tokens,
							TimestampTz at,
							bool *priced);

#endif							/* MAESTER_METER_H */
