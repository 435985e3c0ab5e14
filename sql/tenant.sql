-- Tenants bound to roles: a session acts only as a tenant its role is
-- mapped to in maester.tenant_member.  Every bypass of 0.1.0 is tried here
-- as an unprivileged role and must fail.
\getenv mock_url MAESTER_MOCK_URL
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
GRANT EXECUTE ON FUNCTION pg_temp.err(text) TO PUBLIC;
-- (ids of budgets and jobs depend on the suites that ran before)
CREATE FUNCTION pg_temp.errn(q text) RETURNS text LANGUAGE sql
    AS $$ SELECT regexp_replace(pg_temp.err(q), '(budget|job) [0-9]+', '\1 N', 'g') $$;
GRANT EXECUTE ON FUNCTION pg_temp.errn(text) TO PUBLIC;
-- a function that tries to act as globex through its SET clause
CREATE FUNCTION pg_temp.as_globex() RETURNS text LANGUAGE sql
    SET maester.tenant = 'globex-corp' AS $$ SELECT maester.current_tenant() $$;
GRANT EXECUTE ON FUNCTION pg_temp.as_globex() TO PUBLIC;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority, circuit_failure_threshold)
VALUES ('tenmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{tenmock-%}', 1, 0);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('tenmock-big', '2020-01-01', 100, 200);

CREATE ROLE t_acme LOGIN IN ROLE maester_user;
CREATE ROLE t_globex LOGIN IN ROLE maester_user;
CREATE ROLE t_reader LOGIN IN ROLE maester_reader;
CREATE ROLE t_support LOGIN IN ROLE maester_user;
CREATE ROLE t_analysts NOLOGIN;
CREATE ROLE t_analyst LOGIN IN ROLE maester_reader, t_analysts;
CREATE ROLE t_loner LOGIN IN ROLE maester_user;
INSERT INTO maester.tenant_member (role, tenant) VALUES
    ('t_acme', 'acme-corp'), ('t_reader', 'acme-corp'), ('t_globex', 'globex-corp'),
    ('t_support', 'acme-corp'), ('t_support', 'globex-corp'), ('t_analysts', 'acme-corp');
SELECT pg_temp.err($$ INSERT INTO maester.tenant_member VALUES ('t_acme', '') $$);
SELECT pg_temp.err($$ INSERT INTO maester.tenant_member VALUES ('no_such_role', 'x') $$);

-- an admin acts as any tenant: each tenant spends something
SET maester.tenant = 'acme-corp';
SELECT provider FROM maester.llm_generate('for acme', 'tenmock-big', max_tokens => 5);
SET maester.tenant = 'globex-corp';
SELECT provider FROM maester.llm_generate('for globex', 'tenmock-big', max_tokens => 5);
RESET maester.tenant;
-- acme has (almost) nothing left; globex has plenty
INSERT INTO maester.budget (tenant, period, limit_usd, action)
VALUES ('acme-corp', 'day', 0.01, 'block'), ('globex-corp', 'day', 100, 'block');

-- a user acts as its tenant without setting anything ('default' is its own)
SET ROLE t_acme;
SHOW maester.tenant;
SELECT maester.current_tenant();
-- blocked by acme's budget
SELECT pg_temp.errn($$ SELECT maester.llm_generate('over budget', 'tenmock-big', max_tokens => 500) $$);
-- 0.1.0's bypass: act as someone else.  Refused, acme stays in force
\set VERBOSITY default
SET maester.tenant = 'globex-corp';
\set VERBOSITY terse
SHOW maester.tenant;
SELECT maester.current_tenant();
SELECT pg_temp.errn($$ SELECT maester.llm_generate('over budget', 'tenmock-big', max_tokens => 500) $$);
SELECT pg_temp.err($$ SELECT set_config('maester.tenant', 'globex-corp', false) $$);
SELECT pg_temp.err($$ SELECT set_config('maester.tenant', 'globex-corp', true) $$);
SELECT pg_temp.err($$ SET LOCAL maester.tenant = 'globex-corp' $$);
SELECT pg_temp.err($$ SELECT pg_temp.as_globex() $$);
SELECT maester.current_tenant();
-- its rows, its budgets, what it has left
SELECT DISTINCT tenant FROM maester.usage ORDER BY 1;
SELECT tenant, sum(calls) AS calls FROM maester.cost_daily GROUP BY 1 ORDER BY 1;
SELECT tenant, limit_usd, remaining_usd < limit_usd AS spent_some FROM maester.budget_status ORDER BY 1;
SELECT count(*) AS counters FROM maester.budget_counters() c
  JOIN maester.budget_status b USING (id);
SELECT count(*) AS counters_of_others FROM maester.budget_counters() c
 WHERE c.id NOT IN (SELECT id FROM maester.budget_status);
SELECT role::text, tenant FROM maester.tenant_member ORDER BY 1, 2;
SELECT pg_temp.err($$ INSERT INTO maester.tenant_member VALUES ('t_acme', 'globex-corp') $$);
SELECT pg_temp.err($$ UPDATE maester.tenant_member SET tenant = 'globex-corp' $$);
SELECT pg_temp.err($$ DELETE FROM maester.tenant_member $$);
SELECT pg_temp.err($$ INSERT INTO maester.budget (tenant, period, limit_usd) VALUES ('acme-corp', 'day', 1000) $$);
RESET ROLE;

-- a reader reads its tenant's rows only, and cannot switch either
SET ROLE t_reader;
SELECT DISTINCT tenant FROM maester.usage ORDER BY 1;
SELECT tenant, sum(calls) AS calls FROM maester.cost_daily GROUP BY 1 ORDER BY 1;
SELECT tenant, limit_usd FROM maester.budget_status ORDER BY 1;
SELECT pg_temp.err($$ SET maester.tenant = 'globex-corp' $$);
SELECT DISTINCT tenant FROM maester.usage ORDER BY 1;
SELECT tenant FROM maester.budget ORDER BY 1;
RESET ROLE;

-- a setting that got there another way is refused where it is used: an
-- admin's session sets globex, then becomes acme's role
SET maester.tenant = 'globex-corp';
SET ROLE t_acme;
SELECT pg_temp.err($$ SELECT maester.current_tenant() $$);
SELECT pg_temp.err($$ SELECT count(*) FROM maester.usage $$);
SELECT pg_temp.err($$ SELECT count(*) FROM maester.budget_status $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'tenmock-big', max_tokens => 5) $$);
SELECT pg_temp.err($$ SELECT maester.submit('{"prompt": "x"}') $$);
SELECT pg_temp.err($$ SELECT maester.generate_batch(ARRAY['{"prompt": "x", "model": "tenmock-big"}'::jsonb]) $$);
RESET ROLE;
RESET maester.tenant;

-- a role of several tenants names one of them
SET ROLE t_support;
SELECT pg_temp.err($$ SELECT maester.current_tenant() $$);
SET maester.tenant = 'globex-corp';
SELECT maester.current_tenant(), (SELECT string_agg(DISTINCT tenant, ',') FROM maester.usage) AS sees;
SELECT provider FROM maester.llm_generate('support for globex', 'tenmock-big', max_tokens => 5);
SELECT pg_temp.err($$ SET maester.tenant = 'initech-corp' $$);
SET maester.tenant = 'acme-corp';
SELECT maester.current_tenant(), (SELECT string_agg(DISTINCT tenant, ',') FROM maester.usage) AS sees;
RESET ROLE;
RESET maester.tenant;
SELECT tenant, role FROM maester.usage WHERE role = 't_support';

-- through a group role; and a role mapped to nothing acts as 'default'
SET ROLE t_analyst;
SELECT maester.current_tenant();
RESET ROLE;
SET ROLE t_loner;
SELECT maester.current_tenant();
SELECT pg_temp.err($$ SET maester.tenant = 'acme-corp' $$);
SELECT count(*) AS acme_rows_seen FROM maester.usage WHERE tenant = 'acme-corp';
RESET ROLE;

-- no existence oracle: another tenant's job is "does not exist", like a
-- missing one
SET ROLE t_globex;
SELECT maester.submit('{"prompt": "globex job", "model": "tenmock-big", "max_tokens": 5}') AS globex_job \gset
RESET ROLE;
-- (it runs as its submitter and tenant)
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM maester.job WHERE status IN ('queued', 'running'));
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT j.tenant, j.role, j.status, u.tenant AS ledger_tenant
  FROM maester.job j JOIN maester.usage u USING (request_id) WHERE j.id = :globex_job;
SET ROLE t_acme;
SELECT pg_temp.errn(format('SELECT maester.cancel_job(%s)', :globex_job)) AS other_tenants_job,
       pg_temp.errn('SELECT maester.cancel_job(999999999)') AS missing_job;
SELECT count(*) AS jobs_seen FROM maester.job;
RESET ROLE;

-- a change to the mapping or to role membership is seen at once
DELETE FROM maester.tenant_member WHERE role = 't_globex'::regrole;
REVOKE t_analysts FROM t_analyst;
SET ROLE t_globex;
SELECT maester.current_tenant();
RESET ROLE;
SET ROLE t_analyst;
SELECT maester.current_tenant();
RESET ROLE;

-- no tenant policy trusts the bare setting
SELECT tablename, policyname FROM pg_policies
 WHERE schemaname = 'maester' AND (qual LIKE '%current_setting%' OR with_check LIKE '%current_setting%');
SELECT tablename, policyname FROM pg_policies
 WHERE schemaname = 'maester' AND (qual LIKE '%current_tenant()%' OR with_check LIKE '%current_tenant()%')
 ORDER BY 1, 2;

DELETE FROM maester.job;
DELETE FROM maester.budget WHERE tenant IN ('acme-corp', 'globex-corp');
DELETE FROM maester.tenant_member;
DROP ROLE t_acme, t_globex, t_reader, t_support, t_analysts, t_analyst, t_loner;
