-- One model identity for routing, prices and budgets: a maester.model
-- name or alias, the name asked for, the id sent and the id served all
-- count as the same model; dated snapshots count as their base model.
\getenv mock_url MAESTER_MOCK_URL
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, 'budget [0-9]+', 'budget N'); END $$;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority, circuit_failure_threshold)
VALUES ('imock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{imock-%}', 1, 0);
INSERT INTO maester.model (name, provider, provider_model, aliases)
VALUES ('claude-cache', 'imock', 'fault-cached-100-50', '{cc}'),
       ('tagged-model', 'imock', 'imock-tag:3b', '{}');
INSERT INTO maester.route (name) VALUES ('tagged');
INSERT INTO maester.route_target (route, position, provider, model) VALUES ('tagged', 1, 'imock', 'imock-tag:3b');

SELECT n, maester.model_identity(n) FROM unnest(ARRAY['claude-cache', 'cc', 'fault-cached-100-50',
    'imock-base-2025-04-14', 'imock-base-20250414', 'imock-base-latest', 'imock-base-2025-13-45',
    'imock-base-2025-02-29', 'imock-base-2024-02-29', 'gpt-4.1-mini', 'llama3.2:3b']) n;

-- a price on the maester.model name prices the calls made through its alias
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('claude-cache', '2020-01-01', 100, 200), ('imock-base', '2020-01-01', 10, 20),
       ('tagged-model', '2020-01-01', 1, 2), ('imock-cheap', '2020-01-01', 0.1, 0.2);
SET maester.tenant = 'ident';
SELECT model, cost_usd IS NOT NULL AS priced FROM maester.llm_generate('hi', 'cc', max_tokens => 20);
SELECT requested_model, model, model_name, priced, cost_usd > 0 AS cost
  FROM maester.usage WHERE tenant = 'ident' ORDER BY ts;
-- and cost_of knows the same names
SELECT (maester.cost_of('cc', 1000000, 0)).total_cost_usd AS by_alias,
       (maester.cost_of('fault-cached-100-50', 1000000, 0)).total_cost_usd AS by_id,
       (maester.price_at('cc')).model AS price_row;

-- a route target covered by a maester.model row is priced by the row's name
SELECT model, cost_usd IS NOT NULL AS priced FROM maester.llm_generate('hi', 'tagged', max_tokens => 20);
SELECT requested_model, model_name, priced FROM maester.usage WHERE requested_model = 'tagged';

-- dated snapshots: priced as the base model only when the date is real
SELECT m, (maester.price_at(m)).model AS priced_as
  FROM unnest(ARRAY['imock-base', 'imock-base-2025-04-14', 'imock-base-20250414', 'imock-base-latest',
                    'imock-base-2024-02-29']) m;
SELECT pg_temp.err(format($$ SELECT maester.cost_of(%L, 1, 1) $$, m)) AS not_a_snapshot
  FROM unnest(ARRAY['imock-base-2025-13-45', 'imock-base-2025-02-29', 'imock-base-2025-04-31',
                    'imock-base-1999-01-01', 'imock-base-extra']) m;
-- a vendor prefix (OpenRouter) falls back to the name after it
SELECT (maester.price_at('openai/gpt-4o-2024-08-06')).model AS openrouter_style,
       (maester.cost_of('openai/gpt-4o-2024-08-06', 1000000, 0)).total_cost_usd AS cost;
SELECT model, cost_usd > 0 AS cost FROM maester.llm_generate('hi', 'imock-base-2025-04-14', max_tokens => 20);
SELECT requested_model, model_name, priced FROM maester.usage WHERE requested_model = 'imock-base-2025-04-14';

-- budgets count by identity: one on the model's name blocks its alias and
-- its id; one on the base model blocks its dated snapshots
SET maester.tenant = 'ident-budget';
INSERT INTO maester.budget (tenant, model, period, limit_usd, action)
VALUES ('ident-budget', 'claude-cache', 'day', 0.0001, 'block'),
       ('ident-budget', 'imock-base', 'day', 0.0001, 'block');
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'cc', max_tokens => 20) $$) AS alias;
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'claude-cache', max_tokens => 20) $$) AS name;
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'imock-base-2025-04-14', max_tokens => 20) $$) AS snapshot;
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'imock-base-20250414', max_tokens => 20) $$) AS snapshot2;
-- another model is not counted
SELECT model FROM maester.llm_generate('hi', 'imock-cheap', max_tokens => 20);
SELECT requested_model, model_name, status FROM maester.usage WHERE tenant = 'ident-budget' ORDER BY ts;
-- a budget on an alias is the model's budget
UPDATE maester.budget SET model = 'cc' WHERE tenant = 'ident-budget' AND model = 'claude-cache';
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'claude-cache', max_tokens => 20) $$) AS via_alias_budget;

-- downgrade: the downgraded call counts for the model it went to, live and
-- in the ledger alike
SET maester.tenant = 'ident-down';
INSERT INTO maester.budget (tenant, model, period, limit_usd, action, downgrade_model)
VALUES ('ident-down', 'claude-cache', 'day', 0.0001, 'downgrade', 'imock-cheap');
SELECT model FROM maester.llm_generate('hi', 'cc', max_tokens => 20);
SELECT requested_model, model_name, status FROM maester.usage WHERE tenant = 'ident-down' ORDER BY ts;
SELECT b.spent_usd AS live,
       (SELECT COALESCE(sum(cost_usd), 0) FROM maester.usage
         WHERE tenant = 'ident-down' AND model_name = 'claude-cache') AS ledger
  FROM maester.budget_status b WHERE b.tenant = 'ident-down';

-- a budget or price on a model nothing serves is warned about
INSERT INTO maester.budget (tenant, model, period, limit_usd) VALUES ('ident-x', 'no-such-model', 'day', 1);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('no-such-model', '2020-01-01', 1, 1);
INSERT INTO maester.budget (tenant, model, period, limit_usd) VALUES ('ident-x', 'cc', 'day', 1);

RESET maester.tenant;
DELETE FROM maester.budget WHERE tenant LIKE 'ident%';
DELETE FROM maester.route WHERE name = 'tagged';
