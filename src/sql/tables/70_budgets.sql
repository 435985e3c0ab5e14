-- src/sql/tables/70_budgets.sql: Budgets.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

CREATE TABLE maester.budget (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant          text NOT NULL,
    prompt          text,
    model           text,
    period          text NOT NULL CHECK (period OPERATOR(pg_catalog.=) ANY (ARRAY['day', 'month', 'total'])),
    limit_usd       numeric NOT NULL CHECK (limit_usd OPERATOR(pg_catalog.>) 0)
        CONSTRAINT budget_limit_usd_max CHECK (limit_usd OPERATOR(pg_catalog.<=) 1000000000),
    action          text NOT NULL DEFAULT 'block'
        CHECK (action OPERATOR(pg_catalog.=) ANY (ARRAY['block', 'downgrade', 'warn'])),
    downgrade_model text,
    description     text,
    CHECK ((action OPERATOR(pg_catalog.=) 'downgrade') OPERATOR(pg_catalog.=) (downgrade_model IS NOT NULL))
);

COMMENT ON TABLE maester.budget IS
    'Spending limits per tenant (optionally for one prompt or model) per day, month (UTC) or in total. Enforced before each attempt from shared-memory counters: the worst-case cost is reserved, so concurrent calls cannot overspend.';
COMMENT ON COLUMN maester.budget.limit_usd IS 'The limit in USD per period: more than 0, at most 1,000,000,000 (budget_limit_usd_max).';
COMMENT ON COLUMN maester.budget.prompt IS 'Only calls of this prompt (NULL: all).';
COMMENT ON COLUMN maester.budget.model IS 'Only calls to this model (NULL: all).';
COMMENT ON COLUMN maester.budget.action IS 'block: the call fails (MB001) and leaves a blocked ledger row; downgrade: the call goes to downgrade_model; warn: a WARNING, the call proceeds.';
COMMENT ON COLUMN maester.budget.downgrade_model IS 'The cheaper model (or route) used when the budget would be exceeded (action downgrade).';

-- users and readers see their own tenant's budgets (budget_status too)
ALTER TABLE maester.budget ENABLE ROW LEVEL SECURITY;
CREATE POLICY budget_admin ON maester.budget FOR ALL TO maester_admin USING (true);
CREATE POLICY budget_tenant ON maester.budget FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
