/*-------------------------------------------------------------------------
 *
 * budget.h
 *	  Budgets: reservations and settlement in shared memory.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_BUDGET_H
#define MAESTER_BUDGET_H

#include "utils/numeric.h"

#define BUDGET_MAX_APPLICABLE 16

/* The reservations of one attempt */
typedef struct BudgetHold
{
	int			n;
	int			idx[BUDGET_MAX_APPLICABLE];	/* into the shared states */
	int64		estimate;		/* nano-dollars reserved in each */
	int64		warn_id;		/* a warn budget that is exceeded, or 0 */
} BudgetHold;

typedef enum BudgetVerdict
{
	BUDGET_OK,
	BUDGET_DOWNGRADE
} BudgetVerdict;

extern Size budget_shmem_size(void);
extern void budget_shmem_init(void);
extern void budget_init(void);
extern BudgetVerdict budget_reserve(const char *tenant, const char *prompt,
									const char *model, Numeric estimate,
									BudgetHold *hold, char **downgrade,
									void (*on_block) (void *), void *arg);
extern void budget_settle(BudgetHold *hold, Numeric actual);
extern void budget_settle_at_estimate(BudgetHold *hold);

#endif							/* MAESTER_BUDGET_H */
