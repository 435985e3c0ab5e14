-- src/sql/functions/60_ledger.sql: The ledger's retention and the cost views.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE FUNCTION maester.usage_retention(older_than interval)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF older_than OPERATOR(pg_catalog.<) interval '0' THEN
        RAISE EXCEPTION 'older_than must not be negative'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- pending rows are never removed: their calls may still be in flight
    DELETE FROM maester.usage u
     WHERE u.ts OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) older_than)
       AND u.status OPERATOR(pg_catalog.<>) 'pending';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.usage_retention(interval) IS
    'Deletes ledger rows older than the given age (never pending ones) and returns how many; schedule it (pg_cron) to keep the ledger bounded.';

CREATE VIEW maester.cost_daily WITH (security_invoker = true) AS
SELECT (u.ts AT TIME ZONE 'UTC')::date AS day,
       u.tenant,
       u.provider,
       u.model,
       pg_catalog.count(*) AS calls,
       pg_catalog.count(*) FILTER (WHERE u.status OPERATOR(pg_catalog.<>) 'ok') AS errors,
       COALESCE(pg_catalog.sum(u.input_tokens), 0) AS input_tokens,
       COALESCE(pg_catalog.sum(u.output_tokens), 0) AS output_tokens,
       COALESCE(pg_catalog.sum(u.cost_usd), 0) AS cost_usd,
       pg_catalog.bool_and(u.priced) AS all_priced
  FROM maester.usage u
 GROUP BY 1, 2, 3, 4;

COMMENT ON VIEW maester.cost_daily IS
    'Why did our AI bill jump yesterday? Calls, errors, tokens and cost per day, tenant, provider and model (attempts, from the ledger).';
COMMENT ON COLUMN maester.cost_daily.day IS 'The day (UTC) the attempts started; filter on it: an index on (tenant, day) serves "one tenant, one month".';
COMMENT ON COLUMN maester.cost_daily.tenant IS 'Tenant charged (maester.tenant of the calling session).';
COMMENT ON COLUMN maester.cost_daily.provider IS 'Provider called.';
COMMENT ON COLUMN maester.cost_daily.model IS 'Model as served.';
COMMENT ON COLUMN maester.cost_daily.calls IS 'Attempts recorded (one call may make several).';
COMMENT ON COLUMN maester.cost_daily.errors IS 'Attempts that did not end ok (errors, timeouts, cancelled, orphaned, blocked, pending).';
COMMENT ON COLUMN maester.cost_daily.input_tokens IS 'Prompt tokens, cached ones included.';
COMMENT ON COLUMN maester.cost_daily.output_tokens IS 'Completion tokens.';
COMMENT ON COLUMN maester.cost_daily.cost_usd IS 'Exact cost in USD (unpriced attempts count as 0; see all_priced).';
COMMENT ON COLUMN maester.cost_daily.all_priced IS 'False when some attempts had no price.';

CREATE VIEW maester.cost_by_prompt_version WITH (security_invoker = true) AS
SELECT u.prompt_name AS prompt,
       u.prompt_version AS version,
       u.prompt_hash AS hash,
       pg_catalog.count(*) AS calls,
       pg_catalog.count(*) FILTER (WHERE u.status OPERATOR(pg_catalog.<>) 'ok') AS errors,
       pg_catalog.avg(u.latency_ms) AS avg_latency_ms,
       pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY u.latency_ms) AS p50_latency_ms,
       pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY u.latency_ms) AS p95_latency_ms,
       pg_catalog.avg(u.cost_usd) AS avg_cost_usd,
       COALESCE(pg_catalog.sum(u.cost_usd), 0) AS total_cost_usd,
       pg_catalog.avg(CASE WHEN u.eval_status OPERATOR(pg_catalog.=) 'pass' THEN 1.0 ELSE 0.0 END)
           FILTER (WHERE u.eval_status IS NOT NULL) AS pass_rate,
       pg_catalog.avg(u.eval_score) AS mean_score
  FROM maester.usage u
 WHERE u.prompt_name IS NOT NULL
 GROUP BY 1, 2, 3;

COMMENT ON VIEW maester.cost_by_prompt_version IS
    'Which prompt version costs what: attempts, errors, latency (average, p50, p95) and cost per prompt name, version and rendered-prompt hash.';
COMMENT ON COLUMN maester.cost_by_prompt_version.prompt IS 'Prompt name in the registry.';
COMMENT ON COLUMN maester.cost_by_prompt_version.version IS 'Prompt version.';
COMMENT ON COLUMN maester.cost_by_prompt_version.calls IS 'Attempts recorded.';
COMMENT ON COLUMN maester.cost_by_prompt_version.errors IS 'Attempts that did not end ok.';
COMMENT ON COLUMN maester.cost_by_prompt_version.hash IS 'The rendered prompt''s hash: one row per distinct prompt text sent.';
COMMENT ON COLUMN maester.cost_by_prompt_version.avg_latency_ms IS 'Average attempt latency in ms.';
COMMENT ON COLUMN maester.cost_by_prompt_version.p50_latency_ms IS 'Median attempt latency in ms.';
COMMENT ON COLUMN maester.cost_by_prompt_version.p95_latency_ms IS '95th percentile of attempt latency in ms.';
COMMENT ON COLUMN maester.cost_by_prompt_version.avg_cost_usd IS 'Average cost of a priced attempt in USD.';
COMMENT ON COLUMN maester.cost_by_prompt_version.total_cost_usd IS 'Total cost in USD.';
COMMENT ON COLUMN maester.cost_by_prompt_version.pass_rate IS 'Share of evaluated outputs whose evaluation passed.';
COMMENT ON COLUMN maester.cost_by_prompt_version.mean_score IS 'Mean reliability score of the evaluated outputs.';

CREATE FUNCTION maester.worker_status(
    OUT worker_pid integer, OUT ready boolean, OUT ledger_queued bigint,
    OUT ledger_written bigint, OUT dead_letters bigint, OUT span_queue_bytes bigint,
    OUT spans_written bigint, OUT spans_dropped bigint, OUT job_workers integer,
    OUT callback_worker_pid integer, OUT start_error text)
AS 'MODULE_PATHNAME', 'worker_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION maester.worker_status() IS
    'This database''s maester workers: the resident worker (pid, ready), ledger records queued and written, records that went to maester.dead_letter, bytes of spans queued, spans written and dropped, job workers running, the callback worker, and why the worker could not be started, if so; counters since the server started.';
