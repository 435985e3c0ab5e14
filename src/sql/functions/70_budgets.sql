-- src/sql/functions/70_budgets.sql: Budgets: cache invalidation, counters, budget_status.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE TRIGGER budget_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.budget
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();
CREATE TRIGGER budget_model_check
    BEFORE INSERT OR UPDATE OF model ON maester.budget
    FOR EACH ROW EXECUTE FUNCTION maester.model_name_check();

CREATE FUNCTION maester.budget_counters(
    OUT id bigint, OUT period_start timestamptz, OUT spent_usd numeric,
    OUT reserved_usd numeric, OUT loaded boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'budget_counters'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION maester.budget_counters() IS
    'The shared-memory counters of this database''s budgets: spent and reserved in the current period.';

CREATE VIEW maester.budget_status WITH (security_invoker = true) AS
SELECT b.id,
       b.tenant,
       b.prompt,
       b.model,
       b.period,
       b.limit_usd,
       b.action,
       s.spent_usd,
       COALESCE(c.reserved_usd, 0) AS reserved_usd,
       GREATEST(b.limit_usd OPERATOR(pg_catalog.-) s.spent_usd OPERATOR(pg_catalog.-) COALESCE(c.reserved_usd, 0), 0) AS remaining_usd,
       w.period_start,
       CASE b.period
           WHEN 'day' THEN w.period_start OPERATOR(pg_catalog.+) interval '1 day'
           WHEN 'month' THEN w.period_start OPERATOR(pg_catalog.+) interval '1 month'
       END AS period_end,
       COALESCE(c.loaded, false) AS counters_loaded,
       o.overruns,
       o.overrun_usd
  FROM maester.budget b
  LEFT JOIN maester.budget_counters() c ON c.id OPERATOR(pg_catalog.=) b.id
  CROSS JOIN LATERAL (SELECT CASE b.period
                                 WHEN 'day' THEN pg_catalog.date_trunc('day', pg_catalog.now(), 'UTC')
                                 WHEN 'month' THEN pg_catalog.date_trunc('month', pg_catalog.now(), 'UTC')
                             END AS period_start) w
  -- before a call has loaded the counters, what the ledger says
  CROSS JOIN LATERAL (SELECT CASE WHEN c.loaded THEN c.spent_usd ELSE
                          (SELECT COALESCE(pg_catalog.sum(COALESCE(u.cost_usd, u.estimated_cost_usd, 0)), 0)
                             FROM maester.usage u
                            WHERE u.tenant OPERATOR(pg_catalog.=) b.tenant
                              AND (b.prompt IS NULL OR u.prompt_name OPERATOR(pg_catalog.=) b.prompt)
                              AND (b.model IS NULL
                                   OR u.model_name OPERATOR(pg_catalog.=) maester.model_identity(b.model)
                                   OR (u.model_name IS NULL
                                       AND (u.model OPERATOR(pg_catalog.=) b.model
                                            OR u.requested_model OPERATOR(pg_catalog.=) b.model)))
                              AND (w.period_start IS NULL OR u.ts OPERATOR(pg_catalog.>=) w.period_start)
                              AND u.status OPERATOR(pg_catalog.<>) 'pending') END AS spent_usd) s
  -- settlements above their reservation in the period (index usage_overrun)
  CROSS JOIN LATERAL (SELECT pg_catalog.count(*) AS overruns,
                             COALESCE(pg_catalog.sum(u.overrun_usd), 0) AS overrun_usd
                        FROM maester.usage u
                       WHERE u.overrun_usd IS NOT NULL
                         AND u.tenant OPERATOR(pg_catalog.=) b.tenant
                         AND (b.prompt IS NULL OR u.prompt_name OPERATOR(pg_catalog.=) b.prompt)
                         AND (b.model IS NULL
                              OR u.model_name OPERATOR(pg_catalog.=) maester.model_identity(b.model)
                              OR (u.model_name IS NULL
                                  AND (u.model OPERATOR(pg_catalog.=) b.model
                                       OR u.requested_model OPERATOR(pg_catalog.=) b.model)))
                         AND (w.period_start IS NULL OR u.ts OPERATOR(pg_catalog.>=) w.period_start)) o;

COMMENT ON VIEW maester.budget_status IS
    'Each budget with its limit, what was spent and is reserved by calls in flight in the current period, what remains, and the period''s window (UTC). Counters are loaded from the ledger when a budget is first used in a period.';
COMMENT ON COLUMN maester.budget_status.id IS 'The budget (maester.budget.id).';
COMMENT ON COLUMN maester.budget_status.tenant IS 'Tenant the budget applies to.';
COMMENT ON COLUMN maester.budget_status.prompt IS 'Only this prompt''s calls (NULL: all).';
COMMENT ON COLUMN maester.budget_status.model IS 'Only this model''s calls (NULL: all).';
COMMENT ON COLUMN maester.budget_status.period IS 'day, month (UTC) or total.';
COMMENT ON COLUMN maester.budget_status.limit_usd IS 'The limit in USD per period.';
COMMENT ON COLUMN maester.budget_status.action IS 'block, downgrade or warn.';
COMMENT ON COLUMN maester.budget_status.spent_usd IS 'Spent in the current period (the shared counter, or the ledger''s sum before it is loaded).';
COMMENT ON COLUMN maester.budget_status.reserved_usd IS 'Worst-case cost reserved by calls in flight.';
COMMENT ON COLUMN maester.budget_status.period_start IS 'Start of the current period (UTC); NULL for total.';
COMMENT ON COLUMN maester.budget_status.period_end IS 'End of the current period (UTC); NULL for total.';
COMMENT ON COLUMN maester.budget_status.remaining_usd IS 'limit - spent - reserved, at least 0.';
COMMENT ON COLUMN maester.budget_status.overruns IS 'Calls in the current period whose provider billed more than the worst case reserved for them (maester.usage.overrun_usd): 0 with honest providers.';
COMMENT ON COLUMN maester.budget_status.overrun_usd IS 'How much those calls went over their reservations, in USD.';
COMMENT ON COLUMN maester.budget_status.counters_loaded IS 'False until a call used the budget in this period (spent then comes from the ledger).';
