/*-------------------------------------------------------------------------
 *
 * budget.h
 *	  Budgets: reservations and settlement in shared memory.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_BUDGET_H
#define MAESTER_BUDGET_H

#include "datatype/timestamp.h"
#include "utils/numeric.h"

#define BUDGET_MAX_APPLICABLE 16
#define BUDGET_SCOPE_LEN 256		/* as the ledger keeps names (LEDGER_NAMELEN) */

/* The reservations of one attempt */
typedef struct BudgetHold
{
	int			n;
	int			idx[BUDGET_MAX_APPLICABLE];	/* into the shared states */
	int64		ids[BUDGET_MAX_APPLICABLE];	/* their budgets */
	int64		estimate;		/* nano-dollars reserved in each */
	int64		warn_id;		/* a warn budget that is exceeded, or 0 */
	TimestampTz reserved_at;
	TimestampTz durable_at;		/* its PENDING row was durable, 0: not yet */
	/* the call's scope ("" tenant: nothing to settle) */
	char		tenant[BUDGET_SCOPE_LEN];
	char		prompt[BUDGET_SCOPE_LEN];
	char		model[BUDGET_SCOPE_LEN];
} BudgetHold;

typedef enum BudgetVerdict
{
	BUDGET_OK,
	BUDGET_DOWNGRADE
} BudgetVerdict;

/* A part of an envelope: what one of its calls may cost at worst */
typedef struct BudgetPart
{
	const char *prompt;			/* its prompt's name, or NULL */
	const char *model;			/* its model's identity (budgets' model), or NULL */
	Numeric		estimate;		/* NULL: unpriced */
} BudgetPart;

extern Size budget_shmem_size(void);
extern void budget_shmem_init(void);
extern void budget_init(void);
extern BudgetVerdict budget_reserve(const char *tenant, const char *prompt,
									const char *model, Numeric estimate,
									BudgetHold *hold, char **downgrade,
									void (*on_block) (void *), void *arg);
extern void budget_settle(BudgetHold *hold, Numeric actual);
extern void budget_settle_at_estimate(BudgetHold *hold);
extern void budget_hold_durable(BudgetHold *hold);
extern void budget_forget_database(Oid dboid);
extern void budget_envelope_open(const char *tenant, const BudgetPart *parts, int nparts,
								 const char *what, const char *hint);
extern void budget_envelope_close(void);

#endif							/* MAESTER_BUDGET_H */
