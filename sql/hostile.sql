-- Hostile input, each of which must be refused with an error that names
-- what is wrong and echoes the input cut short, or be masked (issue #14):
-- numbers beyond double precision and out-of-range thresholds and weights
-- in checks, model names no model has, tenant names with control
-- characters, and a provider echoing the key in other forms.
\getenv mock_url MAESTER_MOCK_URL
\getenv api_key MAESTER_TEST_API_KEY
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
-- the whole error: SQLSTATE, message, detail and hint
CREATE FUNCTION pg_temp.errd(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE m text; d text; h text;
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || m || coalesce(E'\nDETAIL: ' || nullif(d, ''), '')
        || coalesce(E'\nHINT: ' || nullif(h, ''), '');
END $$;
GRANT EXECUTE ON FUNCTION pg_temp.err(text) TO PUBLIC;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
VALUES ('hostile', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{hostile-%}', 0);

-- attack: a schema bound beyond double precision; 0.2.0 printed all 401
-- digits of 1e400 naming no check.  Bounds compare exactly now, as JSON
-- numbers, so a huge bound is simply a bound
SELECT maester.evaluate('{"a": 5}', '[{"type": "json_schema", "value":
    {"properties": {"a": {"maximum": 1e400}}}}]') ->> 'status' AS under_huge_maximum;
SELECT maester.evaluate('{"a": 5}', '[{"type": "json_schema", "value":
    {"properties": {"a": {"minimum": 1e400}}}}]') -> 'metrics' -> 1 ->> 'reason' AS under_huge_minimum;
SELECT maester.evaluate('"abc"', '[{"type": "json_schema", "value":
    {"minLength": -1e400, "maxLength": 1e400}}]') ->> 'status' AS huge_lengths;
-- and a model answering a number beyond double precision is judged, not
-- an error, its digits cut short in the reason
SELECT maester.evaluate('{"a": 1e400}', '[{"type": "json_schema", "value":
    {"properties": {"a": {"maximum": 5}}}}]') -> 'metrics' -> 1 ->> 'reason' AS huge_output;
SELECT maester.evaluate('{"a": 1e-400}', '[{"type": "json_schema", "value":
    {"properties": {"a": {"minimum": 0, "maximum": 0}}}}]') -> 'metrics' -> 1 ->> 'reason' AS tiny_output;
-- other numbers beyond double precision name their check
SELECT pg_temp.errd($$ SELECT maester.evaluate('hello', '{"max_length": 1e400}') $$);
SELECT pg_temp.errd($$ SELECT maester.evaluate('hello', '[{"type": "levenshtein", "value": "hello", "max": -1e400}]') $$);
SELECT pg_temp.errd($$ SELECT maester.evaluate('hello', '{"cost_max": 1}', '{"cost_usd": 1e400}') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'hostile-1', options => '{"temperature": 1e400}') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'hostile-1', options => '{"timeout_ms": -1e400}') $$);
SELECT pg_temp.errd($$ SELECT * FROM maester.generate_batch(ARRAY['{"prompt": "x", "max_tokens": 1e400}'::jsonb]) $$);
SELECT error_code, error_message FROM maester.generate_batch(ARRAY['{"prompt": "x", "max_tokens": 1e400}'::jsonb]);

-- attack: a threshold outside [0, 1] silently passed a failing output
-- (-1) or failed a passing one (2)
SELECT pg_temp.errd($$ SELECT maester.evaluate('hello', '{"contains": "hello", "threshold": 2}') $$);
SELECT pg_temp.errd($$ SELECT maester.evaluate('hello', '{"equals": "x", "threshold": -1}') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('hello', '{"assert": ["is_json"], "threshold": 1e400}') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('hello', '{"assert": ["is_json"], "threshold": "high"}') $$);
SELECT pg_temp.err($$ SELECT maester.validate_checks('{"contains": "x", "threshold": 1.5}') $$);
-- the ends of the range are thresholds
SELECT maester.evaluate('hello', '{"assert": ["is_json"], "threshold": 0}') ->> 'status' AS threshold_0,
       maester.evaluate('hello', '{"assert": ["non_empty"], "threshold": 1}') ->> 'status' AS threshold_1;

-- attack: weights of 1e308 overflowed the sums (Infinity / Infinity) and
-- zeroed the score, failing a passing output; now the score is the same
-- as with equal weights of 1
SELECT maester.evaluate('hello', '[{"type": "non_empty", "weight": 1e308},
                                   {"type": "contains", "value": "hello", "weight": 1e308},
                                   {"type": "equals", "value": "x", "weight": 1e308}]') ->> 'reliability_score' AS equal_huge_weights,
       maester.evaluate('hello', '[{"type": "contains", "value": "hello"},
                                   {"type": "equals", "value": "x"}]') ->> 'reliability_score' AS equal_weights;
SELECT maester.evaluate('hello', '[{"type": "non_empty", "weight": 1.7976931348623157e308},
                                   {"type": "contains", "value": "hello", "weight": 1.7976931348623157e308},
                                   {"type": "equals", "value": "x", "weight": 1e-300}]') ->> 'reliability_score' AS largest_weights;
SELECT maester.evaluate('hello', '{"assert": [{"type": "non_empty", "weight": 1e308},
                                              {"type": "contains", "value": "hello", "weight": 1e308},
                                              {"type": "equals", "value": "x", "weight": 1e308}],
                                   "threshold": 0.6}') ->> 'status' AS threshold_with_huge_weights;
SELECT pg_temp.errd($$ SELECT maester.evaluate('hello', '[{"type": "contains", "value": "hello", "weight": 1e400}]') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('hello', '[{"type": "contains", "value": "hello", "weight": "heavy"}]') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('hello', '[{"type": "contains", "value": "hello", "weight": -1e-300}]') $$);

-- attack: model names no model has were routed (a catch-all pattern sends
-- them on) and sent, and echoed whole: empty, "%", 100,000 characters, a
-- newline (a forged log line).  Refused before routing, on every path
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', '') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'hostile-%') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', '%') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'hostile-' || repeat('x', 100000)) $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', E'hostile-1\nLOG:  forged') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', E'hostile-1\t') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', E'hostile-\u0085') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', E'hostile-\x7f') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'hostile-' || repeat('é', 200)) $$);
-- the same through a request object: batches, jobs, completions
SELECT error_code, error_message FROM maester.generate_batch(
    ARRAY['{"prompt": "x", "model": "hostile-%"}', '{"prompt": "x", "model": ""}']::jsonb[]) ORDER BY ordinal;
SELECT error_code, error_message FROM maester.generate_batch(ARRAY['{"prompt": "x"}'::jsonb], model => E'a\nb');
SELECT pg_temp.err($$ SELECT maester.submit('{"prompt": "x", "model": "hostile-%"}') $$);
SELECT pg_temp.err($$ SELECT maester.complete('{"prompt": "x", "model": "hostile-\n"}') $$);
-- a grader's model too
SELECT pg_temp.err($$ SELECT maester.evaluate('hello', '{"llm_rubric": {"rubric": "says hello", "model": "%"}}') $$);
-- and a prompt version's configured model
BEGIN;
SELECT version FROM maester.prompt_register('hostile_p', 'Say {x}', config => '{"model": "hostile-%"}');
SELECT pg_temp.err($$ SELECT maester.llm_generate(prompt_name => 'hostile_p', variables => '{"x": "hi"}') $$);
ROLLBACK;
-- real model ids pass: "_", ".", ":", "/" and 256 bytes (unpriced: quiet)
SET client_min_messages = error;
SELECT model FROM maester.llm_generate('x', 'hostile-a_b.c:d/e');
SELECT length(model) FROM maester.llm_generate('x', 'hostile-' || repeat('x', 248));
RESET client_min_messages;
-- a price or budget on a model no call can ask for is warned about, the
-- model cut short
BEGIN;
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES (E'nothing-\n' || repeat('y', 300), '2020-01-01', 1, 1);
ROLLBACK;

-- attack: tenant names with control characters (a newline forges a line
-- of the server log, where the tenant is printed; an escape sequence
-- rewrites a terminal) were accepted
CREATE ROLE h_user IN ROLE maester_user;
SELECT pg_temp.errd($$ SET maester.tenant = E'acme\nLOG:  forged' $$);
SELECT pg_temp.err($$ SET maester.tenant = E'acme\t' $$);
SELECT pg_temp.err($$ SET maester.tenant = E'acme\x1b[2J' $$);
SELECT pg_temp.err($$ SET maester.tenant = E'acme\u0085' $$);
SELECT pg_temp.err($$ SELECT set_config('maester.tenant', E'a\rb', false) $$);
SELECT pg_temp.err($$ ALTER ROLE h_user SET maester.tenant = E'a\nb' $$);
SET ROLE h_user;
SELECT pg_temp.err($$ SET maester.tenant = E'a\nb' $$);
RESET ROLE;
SHOW maester.tenant;
-- nor can an admin give a role such a tenant, or limits for one
SELECT pg_temp.err($$ INSERT INTO maester.tenant_member VALUES ('h_user', E'acme\nLOG:  forged') $$);
SELECT pg_temp.err($$ INSERT INTO maester.tenant_limit (tenant, requests_per_minute) VALUES (E'acme\u0085', 1) $$);
-- ordinary names are still tenants
SET maester.tenant = 'acme corp/eu-1';
SELECT maester.current_tenant();
RESET maester.tenant;
DROP ROLE h_user;

-- attack: a provider that echoes the key it was sent, transformed, in an
-- error body; 0.2.0 masked only the exact key.  Each form is masked: the
-- key cut by one character, its tail, its first half, base64 (alone,
-- after "Bearer " and after "user:", URL-safe) and percent-encoded
INSERT INTO maester.model (name, provider, provider_model)
SELECT 'hostile-echo' || f, 'hostile', 'fault-echo-key' || f
  FROM unnest(ARRAY['', '-cut', '-tail', '-half', '-b64', '-b64bearer', '-b64basic',
                    '-b64url', '-pct', '-pctlower']) f;
SET client_min_messages = error;
CREATE TEMP TABLE echoed AS
SELECT f AS form, pg_temp.errd(format('SELECT maester.llm_generate(%L, %L)', 'x', 'hostile-echo' || f)) AS e
  FROM unnest(ARRAY['', '-cut', '-tail', '-half', '-b64', '-b64bearer', '-b64basic',
                    '-b64url', '-pct', '-pctlower']) f;
RESET client_min_messages;
-- what the error says, each masked form shown as *** (the few characters
-- left at its ends, the edges of base64 groups, vary with the key)
SELECT form, regexp_replace(e, '[^ =\n]*\*[^ \n]*', '***', 'g') AS error FROM echoed ORDER BY form;
-- no run of 8 characters of the key, nor of its encodings, is left in any
CREATE TEMP TABLE key_forms AS
SELECT v AS form FROM (VALUES
    (:'api_key'),
    (encode(convert_to(:'api_key', 'UTF8'), 'base64')),
    (substr(encode(convert_to('Bearer ' || :'api_key', 'UTF8'), 'base64'), 13)),
    (substr(encode(convert_to('user:' || :'api_key', 'UTF8'), 'base64'), 9)),
    (substr(translate(encode(convert_to('~~' || :'api_key', 'UTF8'), 'base64'), '+/=', '-_'), 5)),
    ((SELECT string_agg('%' || upper(lpad(to_hex(get_byte(b, i)), 2, '0')), '' ORDER BY i)
        FROM (SELECT convert_to(:'api_key', 'UTF8') b) k, generate_series(0, length(b) - 1) i)),
    ((SELECT string_agg('%' || lpad(to_hex(get_byte(b, i)), 2, '0'), '' ORDER BY i)
        FROM (SELECT convert_to(:'api_key', 'UTF8') b) k, generate_series(0, length(b) - 1) i))) v(v);
SELECT length(:'api_key') >= 16 AS key_long_enough,
       count(*) FILTER (WHERE e LIKE 'MG001: model call failed: hostile answered HTTP 400:%') AS errors,
       count(*) FILTER (WHERE position(:'api_key' IN e) > 0) AS with_key,
       count(*) FILTER (WHERE EXISTS (
           SELECT FROM key_forms k, generate_series(1, length(k.form) - 7) i
            WHERE position(substr(k.form, i, 8) IN e) > 0)) AS with_8_of_a_form
  FROM echoed;

DELETE FROM maester.model WHERE provider = 'hostile';
DELETE FROM maester.provider WHERE name = 'hostile';
