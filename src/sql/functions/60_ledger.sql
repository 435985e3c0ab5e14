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

CREATE FUNCTION maester.rollout_compare(
    name  text,
    label text,
    since timestamptz DEFAULT pg_catalog.now() OPERATOR(pg_catalog.-) interval '7 days',
    OUT version        text,
    OUT weight         integer,
    OUT share          numeric,
    OUT calls          bigint,
    OUT attempts       bigint,
    OUT errors         bigint,
    OUT error_rate     double precision,
    OUT cost_usd       numeric,
    OUT avg_cost_usd   numeric,
    OUT p50_latency_ms double precision,
    OUT p95_latency_ms double precision,
    OUT evaluated      bigint,
    OUT pass_rate      numeric,
    OUT mean_score     double precision)
RETURNS SETOF record
LANGUAGE plpgsql
STABLE CALLED ON NULL INPUT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    p_name  text := rollout_compare.name;
    p_label text := rollout_compare.label;
    p_since timestamptz := rollout_compare.since;
BEGIN
    IF p_name IS NULL OR p_label IS NULL THEN
        RAISE EXCEPTION 'name and label must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT FROM maester.prompt_label l
                   WHERE l.name OPERATOR(pg_catalog.=) p_name
                     AND l.label OPERATOR(pg_catalog.=) p_label) THEN
        RAISE EXCEPTION 'prompt "%" has no label "%"', p_name, p_label
            USING ERRCODE = 'undefined_object',
                  HINT = 'See maester.prompt_label for the labels set.';
    END IF;

    -- the label's arms now (a plain label: its one version), and what the
    -- ledger says of each: the caller's invoker rights and the ledger's
    -- row-level security decide which rows count, so a tenant compares its
    -- own calls only
    RETURN QUERY
    WITH arm AS (
        SELECT w.key AS version, (w.value)::integer AS weight
          FROM maester.prompt_label l, pg_catalog.jsonb_each(l.weights) w
         WHERE l.name OPERATOR(pg_catalog.=) p_name
           AND l.label OPERATOR(pg_catalog.=) p_label
        UNION ALL
        SELECT l.version, NULL::integer
          FROM maester.prompt_label l
         WHERE l.name OPERATOR(pg_catalog.=) p_name
           AND l.label OPERATOR(pg_catalog.=) p_label
           AND l.weights IS NULL
    ), ledger AS (
        SELECT u.prompt_version AS version,
               pg_catalog.count(DISTINCT u.request_id) AS calls,
               pg_catalog.count(*) AS attempts,
               pg_catalog.count(*) FILTER (WHERE u.status OPERATOR(pg_catalog.<>) ALL
                                           (ARRAY['ok', 'cached', 'pending'])) AS errors,
               COALESCE(pg_catalog.sum(u.cost_usd), 0) AS cost_usd,
               pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY u.latency_ms) AS p50,
               pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY u.latency_ms) AS p95,
               pg_catalog.count(*) FILTER (WHERE u.eval_status IS NOT NULL) AS evaluated,
               pg_catalog.avg(CASE WHEN u.eval_status OPERATOR(pg_catalog.=) 'pass' THEN 1.0 ELSE 0.0 END)
                   FILTER (WHERE u.eval_status IS NOT NULL) AS pass_rate,
               pg_catalog.avg(u.eval_score) AS mean_score
          FROM maester.usage u
         WHERE u.prompt_name OPERATOR(pg_catalog.=) p_name
           AND u.prompt_version OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT a.version FROM arm a))
           AND (p_since IS NULL OR u.ts OPERATOR(pg_catalog.>=) p_since)
         GROUP BY u.prompt_version
    )
    SELECT a.version,
           a.weight,
           CASE WHEN a.weight IS NULL THEN 1::numeric
                ELSE pg_catalog.round(a.weight::numeric OPERATOR(pg_catalog./)
                                      (pg_catalog.sum(a.weight) OVER ()), 4) END,
           COALESCE(g.calls, 0),
           COALESCE(g.attempts, 0),
           COALESCE(g.errors, 0),
           g.errors::double precision OPERATOR(pg_catalog./) g.attempts,
           COALESCE(g.cost_usd, 0),
           g.cost_usd OPERATOR(pg_catalog./) g.calls,
           g.p50,
           g.p95,
           COALESCE(g.evaluated, 0),
           g.pass_rate,
           g.mean_score
      FROM arm a
      LEFT JOIN ledger g ON g.version OPERATOR(pg_catalog.=) a.version
     ORDER BY a.weight DESC NULLS FIRST, a.version;
END
$$;

COMMENT ON FUNCTION maester.rollout_compare(text, text, timestamptz) IS
    'Compares the arms of a label''s rollout (a plain label: its one version) from the ledger since a time (default a week ago; NULL: all): per version its weight and share, calls, attempts, failed attempts and their rate, cost (total and per call), attempt latency p50/p95, and the evaluation pass rate and mean score. Ledger rows count by prompt version, however the version was asked for; users see their own tenant''s rows only (row-level security of maester.usage).';

CREATE FUNCTION maester.worker_status(
    OUT worker_pid integer, OUT ready boolean, OUT ledger_queued bigint,
    OUT ledger_written bigint, OUT dead_letters bigint, OUT span_queue_bytes bigint,
    OUT spans_written bigint, OUT spans_dropped bigint, OUT job_workers integer,
    OUT callback_worker_pid integer, OUT start_error text)
AS 'MODULE_PATHNAME', 'worker_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION maester.worker_status() IS
    'This database''s maester workers: the resident worker (pid, ready), ledger records queued and written, records that went to maester.dead_letter, bytes of spans queued, spans written and dropped, job workers running, the callback worker, and why the worker could not be started, if so; counters since the server started.';

-- The response cache (respcache.c): its figures come from the ledger
CREATE VIEW maester.cache_stats WITH (security_invoker = true) AS
SELECT s.tenant, s.prompt, s.model, s.hits, s.misses, s.skipped,
       pg_catalog.round(s.hits::numeric OPERATOR(pg_catalog./)
                        NULLIF(s.hits OPERATOR(pg_catalog.+) s.misses, 0), 4) AS hit_rate,
       s.saved_usd, s.first_at, s.last_hit_at
  FROM (SELECT u.tenant,
               u.prompt_name AS prompt,
               u.requested_model AS model,
               pg_catalog.count(DISTINCT u.request_id) FILTER (WHERE u.cache OPERATOR(pg_catalog.=) 'hit') AS hits,
               pg_catalog.count(DISTINCT u.request_id) FILTER (WHERE u.cache OPERATOR(pg_catalog.=) 'miss') AS misses,
               pg_catalog.count(DISTINCT u.request_id) FILTER (WHERE u.cache OPERATOR(pg_catalog.=) 'skipped') AS skipped,
               COALESCE(pg_catalog.sum(u.saved_usd), 0) AS saved_usd,
               pg_catalog.min(u.ts) AS first_at,
               pg_catalog.max(u.ts) FILTER (WHERE u.cache OPERATOR(pg_catalog.=) 'hit') AS last_hit_at
          FROM maester.usage u
         WHERE u.cache IS NOT NULL
         GROUP BY u.tenant, u.prompt_name, u.requested_model) s;

COMMENT ON VIEW maester.cache_stats IS
    'The response cache per tenant, prompt and model asked for, from the ledger: calls it answered (hits), calls it could not (misses: sent, and their answers kept), calls that asked for it but sample (skipped), the hit rate, and saved_usd, what the answers it returned had cost when they were made. Users and readers see their own tenant''s.';
COMMENT ON COLUMN maester.cache_stats.hit_rate IS 'hits / (hits + misses); skipped calls do not count.';
COMMENT ON COLUMN maester.cache_stats.saved_usd IS 'The sum of the hits'' saved_usd: what the cached answers had cost.';

CREATE FUNCTION maester.response_cache_invalidate(prompt text DEFAULT NULL, model text DEFAULT NULL,
                                         older_than interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must not be negative, not %', older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- row-level security keeps a user to its own tenant's entries
    DELETE FROM maester.response_cache c
     WHERE c.tenant OPERATOR(pg_catalog.=) maester.current_tenant()
       AND (response_cache_invalidate.prompt IS NULL OR c.prompt_name OPERATOR(pg_catalog.=) response_cache_invalidate.prompt)
       AND (response_cache_invalidate.model IS NULL OR response_cache_invalidate.model OPERATOR(pg_catalog.=) ANY
            (ARRAY[c.requested_model, c.model, c.model_name]))
       AND (older_than IS NULL OR c.created_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) older_than));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.response_cache_invalidate(text, text, interval) IS
    'Deletes the current tenant''s response cache entries: of one prompt, of one model (the model or route asked for, or the model that answered), made longer ago than older_than, or all of them (every filter given must match); returns how many. Expired entries are never returned and are replaced by the next answer.';
