-- maester.evaluate: the original toolkit's checks with their exact
-- semantics, the other checks, weights, threshold, not_, errors.
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
CREATE FUNCTION pg_temp.ev(content text, checks jsonb DEFAULT NULL, context jsonb DEFAULT NULL)
RETURNS TABLE (status text, score numeric, metrics text) LANGUAGE sql AS $$
  SELECT r ->> 'status', (r ->> 'reliability_score')::numeric,
         (SELECT string_agg(format('%s=%s%s%s', m ->> 'name', m ->> 'score',
                                   CASE WHEN (m ->> 'passed')::bool THEN '' ELSE ' FAIL' END,
                                   COALESCE(' (' || (m ->> 'reason') || ')', '')), '; ')
            FROM jsonb_array_elements(r -> 'metrics') m)
    FROM maester.evaluate(content, checks, context) r $$;

-- the articles' default (no checks): non_empty and max_length 500
SELECT maester.evaluate('[OpenAI:gpt-4.1-mini] Generated response for prompt: Summarize the event.');
SELECT * FROM pg_temp.ev(repeat('x', 501));

-- non_empty: always run; whitespace only is empty
SELECT * FROM pg_temp.ev('', '{}');
SELECT * FROM pg_temp.ev(E' \n\t ', '{}');
SELECT * FROM pg_temp.ev('ok', '{}');

-- required_terms: case-insensitive; score 1 - missing/total
SELECT * FROM pg_temp.ev('Latency rose; IMPACT on users.', '{"required_terms": ["impact", "latency"]}');
SELECT * FROM pg_temp.ev('Latency rose.', '{"required_terms": ["impact", "latency", "service"]}');
SELECT * FROM pg_temp.ev('Ünïcode ÉVÉNEMENT', '{"required_terms": ["événement"]}');

-- max_length: characters; when failing, score max/length
SELECT * FROM pg_temp.ev('abcdef', '{"max_length": 4}');
SELECT * FROM pg_temp.ev('ééé', '{"max_length": 3}');
-- reliability_score: the mean of the scores, 4 places; status pass only if all passed
SELECT * FROM pg_temp.ev('abc', '{"required_terms": ["a", "z", "y"], "max_length": 2}');

-- the other checks
SELECT * FROM pg_temp.ev('Hello World', '{"contains": "World", "icontains": "hello", "starts_with": "Hello"}');
SELECT * FROM pg_temp.ev('Hello World', '{"contains": "world"}');
SELECT * FROM pg_temp.ev('Hello World', '{"contains_any": ["x", "World"], "contains_all": ["Hello", "World", "!"]}');
SELECT * FROM pg_temp.ev('Hello damn World', '{"not_contains": ["DAMN", "heck"]}');
SELECT * FROM pg_temp.ev('exact', '{"equals": "exact"}');
SELECT * FROM pg_temp.ev('exact ', '{"equals": "exact"}');
SELECT * FROM pg_temp.ev('order 12345 shipped', '{"regex": "[0-9]{5}"}');
SELECT * FROM pg_temp.ev('no digits', '{"regex": "^[0-9]+$"}');
SELECT * FROM pg_temp.ev('abc', '{"min_length": 6}');
SELECT * FROM pg_temp.ev('one two  three   four', '{"max_words": 2}');
SELECT * FROM pg_temp.ev('{"a": 1}', '{"is_json": true}');
SELECT * FROM pg_temp.ev('{"a": 1', '{"is_json": true}');
SELECT * FROM pg_temp.ev('kitten', '{"levenshtein": {"expected": "sitting", "max": 3}}');
SELECT * FROM pg_temp.ev('kitten', '{"levenshtein": {"expected": "sitting", "max": 1}}');

-- json_schema: type, required, properties, enum, items, minimum/maximum, minLength/maxLength
SELECT * FROM pg_temp.ev('{"name": "db-3", "severity": "high", "count": 3, "tags": ["a"]}',
  '{"json_schema": {"type": "object", "required": ["name", "severity"],
                    "properties": {"name": {"type": "string", "minLength": 2, "maxLength": 10},
                                   "severity": {"enum": ["low", "high"]},
                                   "count": {"type": "integer", "minimum": 1, "maximum": 5},
                                   "tags": {"type": "array", "items": {"type": "string"}}}}}');
SELECT * FROM pg_temp.ev('{"name": "db-3"}', '{"json_schema": {"type": "object", "required": ["name", "severity"]}}');
SELECT * FROM pg_temp.ev('{"count": 9}', '{"json_schema": {"properties": {"count": {"maximum": 5}}}}');
SELECT * FROM pg_temp.ev('{"count": 1.5}', '{"json_schema": {"properties": {"count": {"type": "integer"}}}}');
SELECT * FROM pg_temp.ev('{"severity": "medium"}', '{"json_schema": {"properties": {"severity": {"enum": ["low", "high"]}}}}');
SELECT * FROM pg_temp.ev('["a", 2]', '{"json_schema": {"type": "array", "items": {"type": "string"}}}');
SELECT * FROM pg_temp.ev('not json', '{"json_schema": {"type": "object"}}');
SELECT * FROM pg_temp.ev('"x"', '{"json_schema": {"type": ["string", "null"], "maxLength": 0}}');

-- cost_max and latency_max need the generation's context
SELECT * FROM pg_temp.ev('ok', '{"cost_max": 0.001, "latency_max": 500}', '{"cost_usd": 0.002, "latency_ms": 120}');
SELECT pg_temp.err($$ SELECT maester.evaluate('ok', '{"cost_max": 0.001}') $$);

-- weights and threshold (promptfoo): score = sum(score x weight) / sum(weight)
SELECT * FROM pg_temp.ev('Hello', '[{"type": "contains", "value": "Hello", "weight": 3},
                                    {"type": "contains", "value": "World", "weight": 1}]');
SELECT * FROM pg_temp.ev('Hello', '{"assert": [{"type": "contains", "value": "Hello", "weight": 3},
                                               {"type": "contains", "value": "World"}],
                                    "threshold": 0.75}');
SELECT * FROM pg_temp.ev('Hello', '{"assert": [{"type": "contains", "value": "World"}], "threshold": 0.75}');
-- weight 0: informational, always passes, not in the score
SELECT * FROM pg_temp.ev('Hello', '[{"type": "contains", "value": "World", "weight": 0}, "is_json"]');
-- bare names in an array
SELECT * FROM pg_temp.ev('{}', '["non_empty", "is_json"]');
-- not_ negates: score 1 - s
SELECT * FROM pg_temp.ev('Hello', '{"not_contains_any": ["Hello", "x"], "not_regex": "[0-9]", "not_is_json": true}');

-- bad input (22023, or the regex engine's 2201B)
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '{"no_such_check": 1}') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '"max_length"') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '{"regex": "(unclosed"}') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '{"json_schema": {"type": "thing"}}') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '{"json_schema": {"required": "name"}}') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '{"json_schema": 5}') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '{"max_length": "ten"}') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '{"required_terms": [1]}') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '[{"value": 1}]') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '[5]') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '[{"type": "contains", "value": "x", "weight": -1}]') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '{"assert": 5}') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', NULL, '[1]') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate(NULL) $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x', '{"llm_rubric": 5}') $$);
