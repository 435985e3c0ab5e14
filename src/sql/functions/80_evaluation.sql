-- src/sql/functions/80_evaluation.sql: Evaluation: evaluate, validate_checks, suites, eval_compare, replay.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE FUNCTION maester.evaluate(content text, checks jsonb DEFAULT NULL, context jsonb DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'evaluate'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION maester.validate_checks(checks jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'validate_checks'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION maester.validate_checks(jsonb) IS
    'Returns the checks if maester.evaluate would accept them, else raises its error (22023, or 2201B for a bad regex); runs no grader. prompt_register validates checks this way.';

COMMENT ON FUNCTION maester.evaluate(text, jsonb, jsonb) IS
    'Checks an output: {status, reliability_score, metrics[{name, score, passed, reason}]}. checks: an object ({"required_terms": [...], "max_length": 500, "threshold": 0.8}) or an array of assertions ({"type", "value", "weight"}); NULL: non_empty and max_length 500. context: cost_usd, latency_ms.';

CREATE FUNCTION maester.eval_run_calls(suite text, prompt_version text DEFAULT NULL, model text DEFAULT NULL,
                                       concurrency integer DEFAULT 8)
RETURNS jsonb
LANGUAGE plpgsql
VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    s       maester.eval_suite;
    c       maester.eval_case;
    cases   maester.eval_case[];
    g       maester.batch_result;
    chk     jsonb;
    ev      jsonb;
    msg     text;
    version text := eval_run_calls.prompt_version;
    used    text := eval_run_calls.model;
    results jsonb := '[]';
BEGIN
    SELECT * INTO s FROM maester.eval_suite es WHERE es.name OPERATOR(pg_catalog.=) eval_run_calls.suite;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'evaluation suite "%" does not exist', eval_run_calls.suite
            USING ERRCODE = 'undefined_object';
    END IF;
    -- a run evaluates one version: a label in a rollout would mix its arms
    IF EXISTS (SELECT FROM maester.prompt_label l
               WHERE l.name OPERATOR(pg_catalog.=) s.prompt
                 AND l.label OPERATOR(pg_catalog.=) eval_run_calls.prompt_version
                 AND l.weights IS NOT NULL) THEN
        RAISE EXCEPTION 'label "%" of prompt "%" is in a rollout', eval_run_calls.prompt_version, s.prompt
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An evaluation run evaluates one version; the label splits its renders over several.',
                  HINT = 'Run the suite on each version of the rollout and compare the runs with maester.eval_compare().';
    END IF;

    -- every case through the batch path, `concurrency` at a time
    cases := ARRAY(SELECT ec FROM maester.eval_case ec
                    WHERE ec.suite OPERATOR(pg_catalog.=) s.name ORDER BY ec.case_name);
    FOR g IN SELECT * FROM maester.generate_batch(
                 ARRAY(SELECT jsonb_build_object('prompt_name', s.prompt,
                                                 'variables', (cases[i]).variables,
                                                 'prompt_version', eval_run_calls.prompt_version,
                                                 'model', eval_run_calls.model)
                         FROM pg_catalog.generate_subscripts(cases, 1) i ORDER BY i),
                 concurrency => eval_run_calls.concurrency) b
             ORDER BY b.ordinal LOOP
        c := cases[g.ordinal];
        IF g.error_class IS NOT NULL THEN
            results := results OPERATOR(pg_catalog.||) jsonb_build_array(jsonb_build_object(
                'case_name', c.case_name, 'score', 0, 'passed', false, 'error', g.error_message,
                'trace_id', g.trace_id, 'request_id', g.request_id));
            CONTINUE;
        END IF;
        BEGIN
            chk := COALESCE(c.checks,
                            (SELECT v.checks FROM maester.prompt_version v
                              WHERE v.name OPERATOR(pg_catalog.=) s.prompt
                                AND v.version OPERATOR(pg_catalog.=) g.prompt_version));
            IF c.expected IS NOT NULL THEN
                chk := jsonb_build_object('assert',
                    CASE WHEN chk IS NULL THEN '[{"type": "max_length", "value": 500}]'::jsonb
                         WHEN jsonb_typeof(chk) OPERATOR(pg_catalog.=) 'array' THEN chk
                         WHEN chk ? 'assert' THEN chk -> 'assert'
                         ELSE (SELECT COALESCE(jsonb_agg(jsonb_build_object('type', e.key, 'value', e.value)), '[]')
                                 FROM jsonb_each(chk) e WHERE e.key OPERATOR(pg_catalog.<>) 'threshold')
                    END OPERATOR(pg_catalog.||) jsonb_build_array(jsonb_build_object(
                        'type', 'levenshtein', 'value', c.expected,
                        'max', floor(length(c.expected) OPERATOR(pg_catalog.*) 0.2))))
                    OPERATOR(pg_catalog.||) CASE WHEN chk ? 'threshold'
                                                 THEN jsonb_build_object('threshold', chk -> 'threshold')
                                                 ELSE '{}'::jsonb END;
            END IF;
            ev := maester.evaluate(g.content, chk,
                                   jsonb_build_object('cost_usd', g.cost_usd, 'latency_ms', g.latency_ms));
            results := results OPERATOR(pg_catalog.||) jsonb_build_array(jsonb_build_object(
                'case_name', c.case_name, 'content', g.content,
                'score', (ev ->> 'reliability_score')::numeric,
                'passed', ev ->> 'status' OPERATOR(pg_catalog.=) 'pass', 'evaluation', ev,
                'cost_usd', g.cost_usd, 'latency_ms', g.latency_ms,
                'trace_id', g.trace_id, 'request_id', g.request_id));
            version := g.prompt_version;
            used := COALESCE(eval_run_calls.model, g.model);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            results := results OPERATOR(pg_catalog.||) jsonb_build_array(jsonb_build_object(
                'case_name', c.case_name, 'score', 0, 'passed', false, 'error', msg,
                'trace_id', g.trace_id, 'request_id', g.request_id));
        END;
    END LOOP;
    RETURN jsonb_build_object('suite', s.name, 'prompt', s.prompt, 'prompt_version', version,
                              'model', used, 'results', results);
END
$$;

COMMENT ON FUNCTION maester.eval_run_calls(text, text, text, integer) IS
    'What maester.eval_run records, without recording it: runs every case of a suite through the batch path and checks each output; returns {suite, prompt, prompt_version, model, results[{case_name, content, score, passed, evaluation, cost_usd, latency_ms, trace_id, request_id, error}]}.';

CREATE FUNCTION maester.eval_run(suite text, prompt_version text DEFAULT NULL, model text DEFAULT NULL,
                                 concurrency integer DEFAULT 8)
RETURNS maester.eval_run
AS 'MODULE_PATHNAME', 'eval_run'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.eval_run(text, text, text, integer) IS
    'Runs every case of a suite through the gateway''s batch path (concurrency cases at a time; prompt version: given, else latest; model: given, else the version''s route) and stores each result and the run''s summary, under the caller''s tenant; the calls are ledger rows like any other. Only this function writes maester.eval_run and maester.eval_result.';

CREATE FUNCTION maester.eval_compare(run_a bigint, run_b bigint)
RETURNS TABLE (case_name text, score_a numeric, score_b numeric, passed_a boolean, passed_b boolean,
               cost_a numeric, cost_b numeric, latency_a double precision, latency_b double precision,
               better text)
LANGUAGE sql
STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH a AS (SELECT * FROM maester.eval_result r WHERE r.run_id OPERATOR(pg_catalog.=) $1),
         b AS (SELECT * FROM maester.eval_result r WHERE r.run_id OPERATOR(pg_catalog.=) $2),
         per_case AS (
            SELECT COALESCE(a.case_name, b.case_name) AS case_name,
                   a.score AS score_a, b.score AS score_b, a.passed AS passed_a, b.passed AS passed_b,
                   a.cost_usd AS cost_a, b.cost_usd AS cost_b, a.latency_ms AS latency_a, b.latency_ms AS latency_b
              FROM a FULL JOIN b ON a.case_name OPERATOR(pg_catalog.=) b.case_name),
         overall AS (
            SELECT '(overall)'::text AS case_name,
                   (SELECT r.mean_score FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $1),
                   (SELECT r.mean_score FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $2),
                   (SELECT r.pass_rate OPERATOR(pg_catalog.=) 1 FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $1),
                   (SELECT r.pass_rate OPERATOR(pg_catalog.=) 1 FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $2),
                   (SELECT r.total_cost_usd FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $1),
                   (SELECT r.total_cost_usd FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $2),
                   (SELECT r.p50_latency_ms FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $1),
                   (SELECT r.p50_latency_ms FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $2))
    SELECT x.*,
           CASE WHEN x.score_a IS NULL OR x.score_b IS NULL THEN NULL
                WHEN x.score_a OPERATOR(pg_catalog.>) x.score_b THEN 'a'
                WHEN x.score_b OPERATOR(pg_catalog.>) x.score_a THEN 'b'
                WHEN COALESCE(x.cost_a, 0) OPERATOR(pg_catalog.<) COALESCE(x.cost_b, 0) THEN 'a (cheaper)'
                WHEN COALESCE(x.cost_b, 0) OPERATOR(pg_catalog.<) COALESCE(x.cost_a, 0) THEN 'b (cheaper)'
                ELSE 'tie' END
      FROM (SELECT * FROM per_case UNION ALL SELECT * FROM overall) x
     ORDER BY x.case_name OPERATOR(pg_catalog.=) '(overall)', x.case_name
$$;

COMMENT ON FUNCTION maester.eval_compare(bigint, bigint) IS
    'Compares two runs of a suite case by case and overall (mean score, all passed, total cost, p50 latency): which one did better (higher score; at equal scores, the cheaper) -- the table for deciding a rollout.';

CREATE FUNCTION maester.replay(request_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    c   maester.capture;
    g   maester.generation;
    new_score double precision;
BEGIN
    SELECT * INTO c FROM maester.capture k WHERE k.request_id OPERATOR(pg_catalog.=) replay.request_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'cannot replay request %: its prompt and variables were not captured', replay.request_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'maester.capture_content was off for that call (the default), or the capture was removed.',
                  HINT = 'SET maester.capture_content = on (superuser) before calls you may want to replay.';
    END IF;
    IF c.prompt_name IS NOT NULL THEN
        g := maester.llm_generate(prompt_name => c.prompt_name, variables => c.variables,
                                  prompt_version => c.prompt_version, model => c.model,
                                  max_tokens => c.max_tokens, options => COALESCE(c.options, '{}'));
    ELSIF c.messages IS NOT NULL THEN
        g := maester.llm_generate(messages => c.messages, model => c.model,
                                  max_tokens => c.max_tokens, options => COALESCE(c.options, '{}'));
    ELSE
        g := maester.llm_generate(prompt => c.prompt, system => c.system, model => c.model,
                                  max_tokens => c.max_tokens, options => COALESCE(c.options, '{}'));
    END IF;
    new_score := (g.evaluation ->> 'reliability_score')::double precision;
    RETURN jsonb_build_object(
        'original', jsonb_build_object('request_id', c.request_id, 'provider', c.provider, 'model', c.model,
                                       'prompt_version', c.prompt_version, 'content', c.output,
                                       'reliability_score', c.eval_score),
        'replay', jsonb_build_object('request_id', g.request_id, 'provider', g.provider, 'model', g.model,
                                     'prompt_version', g.prompt_version, 'content', g.content,
                                     'reliability_score', new_score),
        'content_match', c.output IS NOT DISTINCT FROM g.content,
        'length_delta', length(g.content) OPERATOR(pg_catalog.-) length(c.output),
        'same_provider', c.provider IS NOT DISTINCT FROM g.provider,
        'same_model', c.model IS NOT DISTINCT FROM g.model,
        'score_delta', new_score OPERATOR(pg_catalog.-) c.eval_score);
END
$$;

COMMENT ON FUNCTION maester.replay(uuid) IS
    'Re-runs a captured call with the same prompt version, variables and model, and compares: content match, length delta, same provider and model, reliability score delta. Needs maester.capture_content on at the time of the call.';
