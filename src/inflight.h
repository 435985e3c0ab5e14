/*-------------------------------------------------------------------------
 *
 * inflight.h
 *	  The attempts of calls: their ledger records, and the attempts in
 *	  flight that an error, a cancel or the backend's exit must settle.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_INFLIGHT_H
#define MAESTER_INFLIGHT_H

#include "lib/ilist.h"

#include "budget.h"
#include "call.h"
#include "ledger.h"

/*
 * An attempt whose PENDING row is queued and whose SETTLE row is not yet:
 * one per call of a batch that is waiting for the ledger, on the wire, or
 * being graded.  Kept in TopMemoryContext so that the exit callback can
 * settle it.
 */
struct InFlight
{
	dlist_node	node;
	LedgerSlot *slot;
	BudgetHold	hold;
	bool		sent;			/* the request may have left */
	bool		answered;		/* the provider answered: rec has its usage */
	LedgerRecord rec;
};

extern InFlight *inflight_add(LedgerSlot *slot, LedgerRecord *r, BudgetHold *hold);
extern void inflight_answered(InFlight *f, const LedgerRecord *r, Numeric actual);
extern void inflight_done(InFlight *f);
extern void inflight_cancel(InFlight *f, const char *error_class);
extern void inflight_register_exit(void);
extern int64 estimate_tokens(const char *s);

extern int	target_max_tokens(const RouteTarget *t, int asked);
extern int	target_output_limit(const RouteTarget *t);
extern const char *cache_state_name(int state);
extern void call_record_pending(Call *c, LedgerRecord *r, int attempt, const char *status,
								const char *provider, const char *model, const char *model_name);
extern Numeric attempt_record_pending(Call *c, RouteTarget *t, LedgerRecord *r);
extern Numeric call_worst_cost(Call *c, const char **identity);
extern void attempt_record_blocked(LedgerSlot *slot, LedgerRecord *r);
extern void attempt_warn_overrun(Call *c, RouteTarget *t, Numeric reserved,
								 Numeric billed, int max_tokens);
extern void attempt_record_outcome(Call *c, RouteTarget *t, const Failure *f,
								   LedgerRecord *r, bool ok);
extern void attempt_record_evaluation(Call *c, LedgerRecord *r);

extern void target_drop_refused(const RouteTarget *t, GenRequest *gen, Span *span);

#endif							/* MAESTER_INFLIGHT_H */
