-- Conversations, tools and structured output (issue #15), at OpenAI and
-- Anthropic alike.  The mock checks conversations as the APIs do (npm
-- openai 6.49.0 ChatCompletionMessageParam; @anthropic-ai/sdk 1.16.0
-- MessageParam, ToolUseBlock, ToolResultBlockParam) and answers tool calls
-- and schema values as their response types describe (see the mock's
-- check_openai_messages, check_anthropic_messages and Answer).
\getenv mock_url MAESTER_MOCK_URL
SELECT set_config('test.mock_url', :'mock_url', false) IS NOT NULL AS ok;
CREATE TEMP TABLE mock_out (line text);
CREATE FUNCTION pg_temp.mock(path text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE mock_out;
  EXECUTE format('COPY mock_out FROM PROGRAM %L WITH (FORMAT csv, QUOTE E''\x01'', DELIMITER E''\x02'')',
                 'curl -s ' || current_setting('test.mock_url') || path);
  RETURN (SELECT string_agg(line, E'\n')::jsonb FROM mock_out);
END $$;
CREATE FUNCTION pg_temp.last_body() RETURNS jsonb LANGUAGE sql AS $$
  SELECT pg_temp.mock('/_mock/requests') -> -1 -> 'body' $$;
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
VALUES ('cvopenai', 'openai', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{}', 0),
       ('cvanth', 'anthropic', :'mock_url', 'MAESTER_TEST_API_KEY', '{}', 0);
INSERT INTO maester.model (name, provider, provider_model) VALUES
    ('cv-o', 'cvopenai', 'gpt-cv'), ('cv-a', 'cvanth', 'claude-cv'),
    ('cv-badargs', 'cvopenai', 'fault-shape-badargs'), ('cv-replay', 'cvopenai', 'cv-replay');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
SELECT name, '2020-01-01', 1, 10 FROM maester.model WHERE name LIKE 'cv-%';
SET maester.tenant = 'conversation';

-- a multi-turn call: the conversation is sent as given, and its hash is
-- the SHA-256 of its canonical form (README)
SELECT content, finish_reason, tool_calls, parsed, refusal,
       prompt_hash = encode(sha256(convert_to(
         '[{"role":"system","content":"Be brief."},{"role":"user","content":"Name a colour."},'
         '{"role":"assistant","content":"Blue."},{"role":"user","content":"Another?"}]', 'UTF8')), 'hex') AS canonical_hash
  FROM maester.llm_generate(model => 'cv-o', messages => '[
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"}]');
SELECT pg_temp.last_body() -> 'messages' AS openai_messages;
-- the same hash whatever the key order or spacing of the input
SELECT a.prompt_hash = b.prompt_hash AS same_hash
  FROM maester.llm_generate(model => 'cv-o', messages => '[{"role":"user","content":"hi"}]') a,
       maester.llm_generate(model => 'cv-o', messages => '[ { "content" : "hi", "role" : "user" } ]') b;
-- Anthropic: system messages become "system", the turns "messages"
SELECT content FROM maester.llm_generate(model => 'cv-a', messages => '[
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": [{"type": "text", "text": "Another"}, {"type": "text", "text": "?"}]}]');
SELECT pg_temp.last_body() -> 'system' AS system, pg_temp.last_body() -> 'messages' AS anthropic_messages;

-- a tool loop at OpenAI: the model calls the tool (null content,
-- tool_calls with arguments as a string of JSON: normalized to an object)
CREATE TEMP TABLE turn AS
SELECT g.* FROM maester.llm_generate(model => 'cv-o',
    messages => '[{"role": "user", "content": "Weather in Paris?"}]',
    options => '{"tools": [{"name": "get_weather", "description": "Current weather",
                            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                           "days": {"type": "integer", "minimum": 1}},
                                           "required": ["city"]}}]}') g;
SELECT content, finish_reason, jsonb_array_length(tool_calls) AS calls,
       tool_calls -> 0 ->> 'id' ~ '^call_[0-9a-f]{24}$' AS has_id,
       tool_calls -> 0 -> 'name' AS name, tool_calls -> 0 -> 'arguments' AS arguments,
       output_tokens > 0 AS billed, evaluation ->> 'status' AS evaluation
  FROM turn;
SELECT pg_temp.last_body() -> 'tools' AS openai_tools, pg_temp.last_body() ? 'tool_choice' AS tool_choice_sent;
-- the tool's result goes back with the assistant's turn as it came
SELECT g.content, g.finish_reason, g.tool_calls
  FROM turn t, maester.llm_generate(model => 'cv-o',
    messages => jsonb_build_array(
        jsonb_build_object('role', 'user', 'content', 'Weather in Paris?'),
        jsonb_build_object('role', 'assistant', 'content', t.content, 'tool_calls', t.tool_calls),
        jsonb_build_object('role', 'tool', 'tool_call_id', t.tool_calls -> 0 -> 'id', 'content', '18C, sunny')),
    options => '{"tools": [{"name": "get_weather", "parameters": {"type": "object"}}]}') g;
SELECT m -> 'role' AS role, m -> 'content' AS content,
       m -> 'tool_calls' -> 0 -> 'type' AS call_type,
       m -> 'tool_calls' -> 0 -> 'function' -> 'arguments' AS arguments_sent,
       (m ->> 'tool_call_id') IS NOT NULL AS has_tool_call_id
  FROM jsonb_array_elements(pg_temp.last_body() -> 'messages') m;
DROP TABLE turn;

-- the same loop at Anthropic: tool_use blocks in, tool_result blocks out
CREATE TEMP TABLE turn AS
SELECT g.* FROM maester.llm_generate(model => 'cv-a',
    messages => '[{"role": "user", "content": "Weather in Paris?"}]',
    options => '{"tools": [{"type": "function", "function": {"name": "get_weather",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                 "tool_choice": "required"}') g;
SELECT content, finish_reason, tool_calls -> 0 ->> 'id' ~ '^toolu_' AS has_id,
       tool_calls -> 0 -> 'name' AS name, tool_calls -> 0 -> 'arguments' AS arguments
  FROM turn;
SELECT pg_temp.last_body() -> 'tools' AS anthropic_tools, pg_temp.last_body() -> 'tool_choice' AS tool_choice;
SELECT g.content, g.finish_reason
  FROM turn t, maester.llm_generate(model => 'cv-a',
    messages => jsonb_build_array(
        jsonb_build_object('role', 'user', 'content', 'Weather in Paris?'),
        jsonb_build_object('role', 'assistant', 'content', 'Let me look.', 'tool_calls', t.tool_calls),
        jsonb_build_object('role', 'tool', 'tool_call_id', t.tool_calls -> 0 -> 'id', 'content', '18C, sunny')),
    options => '{"tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}') g;
SELECT m -> 'role' AS role, CASE jsonb_typeof(m -> 'content') WHEN 'string' THEN '"text"'
       ELSE jsonb_path_query_array(m -> 'content', '$[*].type') END AS blocks
  FROM jsonb_array_elements(pg_temp.last_body() -> 'messages') m;
DROP TABLE turn;
-- tool_choice none: the model answers in text
SELECT content, tool_calls FROM maester.llm_generate('Weather?', 'cv-a',
    options => '{"tools": [{"name": "get_weather"}], "tool_choice": "none"}');
SELECT pg_temp.last_body() -> 'tool_choice' AS tool_choice;

-- arguments a model wrote that are not JSON stay a JSON string, not an error
SELECT finish_reason, tool_calls -> 0 -> 'arguments' AS arguments, cost_usd > 0 AS billed
  FROM maester.llm_generate('hi', 'cv-badargs');

-- structured output: the parsed answer, checked against the schema
SELECT content, parsed, finish_reason, evaluation -> 'metrics' -> 1 ->> 'name' AS check,
       evaluation ->> 'status' AS status
  FROM maester.llm_generate('Extract the city: I live in Paris.', 'cv-o', options => '{
    "response_format": {"type": "json_schema", "json_schema": {"name": "place", "strict": true,
      "schema": {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
                 "required": ["city", "population"], "additionalProperties": false}}}}');
SELECT pg_temp.last_body() -> 'response_format' AS openai_response_format;
-- at Anthropic, a forced tool whose input is the answer (not a tool call)
SELECT content, parsed, finish_reason, tool_calls, evaluation ->> 'status' AS status
  FROM maester.llm_generate('Extract the city: I live in Paris.', 'cv-a', options => '{
    "response_format": {"type": "json_schema", "json_schema": {"name": "place",
      "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}');
SELECT pg_temp.last_body() -> 'tool_choice' AS tool_choice,
       pg_temp.last_body() -> 'tools' -> 0 -> 'name' AS tool;
-- a schema the answer does not meet fails the evaluation (the schema asks
-- for a minimum the mock's value is under)
SELECT parsed, evaluation ->> 'status' AS status, evaluation -> 'metrics' -> 1 ->> 'reason' AS reason
  FROM maester.llm_generate('Extract.', 'cv-o', options => '{
    "response_format": {"type": "json_schema", "json_schema": {"name": "n",
      "schema": {"type": "object", "properties": {"n": {"type": "number", "maximum": 1}}}}}}');
-- with a version's checks: the json_schema check is added to them
SELECT version FROM maester.prompt_register('cv_extract', 'Extract the number: {text}',
    checks => '{"max_length": 100}');
SELECT jsonb_path_query_array(evaluation -> 'metrics', '$[*].name') AS checks, evaluation ->> 'status' AS status
  FROM maester.llm_generate(prompt_name => 'cv_extract', variables => '{"text": "two"}', model => 'cv-o',
    options => '{"response_format": {"type": "json_schema", "json_schema": {"name": "n",
      "schema": {"type": "object", "properties": {"n": {"type": "number"}}}}}}') g;

-- JSON mode: OpenAI refuses it (400) unless a message says "json", so
-- maester says it when none does
SELECT parsed IS NOT NULL AS parsed FROM maester.llm_generate('Summarize: tea.', 'cv-o',
    options => '{"response_format": {"type": "json_object"}}');
SELECT pg_temp.last_body() -> 'messages' -> 0 AS added;
SELECT jsonb_array_length(pg_temp.last_body() -> 'messages') AS sent
  FROM maester.llm_generate('Summarize as JSON: tea.', 'cv-o', options => '{"response_format": "json"}');

-- messages in a batch; generation's new fields after the error fields
SELECT ordinal, content, tool_calls IS NOT NULL AS called, error_class
  FROM maester.generate_batch(ARRAY[
    '{"messages": [{"role": "user", "content": "one"}], "model": "cv-o"}',
    '{"messages": [{"role": "user", "content": "two"}], "model": "cv-a",
      "options": {"tools": [{"name": "t"}]}}',
    '{"messages": [{"role": "tool", "content": "x", "tool_call_id": "c"}], "model": "cv-o"}']::jsonb[])
 ORDER BY ordinal;

-- complete() takes messages, and says what it called
SELECT r -> 'content' AS content, r -> 'tool_calls' -> 0 -> 'name' AS tool, r ? 'parsed' AS has_parsed
  FROM maester.complete('{"messages": [{"role": "user", "content": "Weather?"}], "model": "cv-o",
                          "options": {"tools": [{"name": "get_weather"}]}}') r;

-- bad conversations and options: 22023 before anything is sent or billed
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', messages => '[{"role": "user", "content": "y"}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": "y"}]', system => 's') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '{"role": "user"}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "system", "content": "only"}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "robot", "content": "y"}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": 5}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": [{"type": "image_url"}]}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": "y", "name": "bob"}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": null}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": "q"},
    {"role": "tool", "tool_call_id": "call_9", "content": "r"}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": "q"},
    {"role": "assistant", "tool_calls": [{"id": "a", "name": "t", "arguments": {}}]},
    {"role": "tool", "tool_call_id": "b", "content": "r"}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": "q"},
    {"role": "assistant", "tool_calls": [{"id": "a", "name": "t", "arguments": "[1]"}]}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": "q"},
    {"role": "assistant", "tool_calls": [{"id": "a", "name": "bad name"}]}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"tools": {"name": "t"}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"tools": [{"name": "no spaces"}]}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"tools": [{"name": "t"}, {"name": "t"}]}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"tools": [{"name": "t", "parameters": "x"}]}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"tools": [{"type": "web_search"}]}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"tool_choice": "auto"}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"tools": [{"name": "t"}], "tool_choice": {"name": "u"}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"tools": [{"name": "t"}], "tool_choice": "sometimes"}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": []}}}') $$);
SELECT pg_temp.err($$ SELECT maester.submit('{"messages": [{"role": "user"}]}') $$);

-- a captured conversation replays as a conversation
SET maester.capture_content = on;
SELECT request_id AS rid FROM maester.llm_generate(model => 'cv-replay',
    messages => '[{"role": "user", "content": "Say hi."}]') \gset
SELECT messages, prompt IS NULL AS no_prompt FROM maester.capture WHERE request_id = :'rid';
SELECT r -> 'content_match' AS content_match FROM maester.replay(:'rid') r;
RESET maester.capture_content;
DELETE FROM maester.capture WHERE tenant = 'conversation';

-- chat prompts in the registry: a version that is a list of role
-- messages, each a template with the same strict rules
SELECT version, variables, template IS NULL AS no_template,
       template_hash = encode(sha256(convert_to((jsonb_build_object('template', NULL, 'system_template', NULL,
           'config', '{}'::jsonb, 'checks', NULL) || jsonb_build_object('messages', messages))::text, 'UTF8')), 'hex') AS documented_hash
  FROM maester.prompt_register('cv_chat', messages => '[
    {"role": "system", "content": "You answer in {language}."},
    {"role": "user", "content": "Translate: {text}"},
    {"role": "assistant", "content": "Which register?"},
    {"role": "user", "content": "{register}, please."}]');
-- registering the same again is the same version; a text version's hash
-- is still 0.1.0's (messages are not part of it)
SELECT version FROM maester.prompt_register('cv_chat', messages => '[
    {"role": "system", "content": "You answer in {language}."},
    {"role": "user", "content": "Translate: {text}"},
    {"role": "assistant", "content": "Which register?"},
    {"role": "user", "content": "{register}, please."}]');
SELECT template_hash = encode(sha256(convert_to(jsonb_build_object('template', template,
           'system_template', system_template, 'config', config, 'checks', checks)::text, 'UTF8')), 'hex') AS text_hash_unchanged
  FROM maester.prompt_version WHERE name = 'cv_extract';
SELECT content, system, messages,
       hash = encode(sha256(convert_to(messages::text, 'UTF8')), 'hex') AS jsonb_text_is_not_canonical,
       hash = encode(sha256(convert_to('[{"role":"system","content":"You answer in French."},'
           '{"role":"user","content":"Translate: good morning"},{"role":"assistant","content":"Which register?"},'
           '{"role":"user","content":"formal, please."}]', 'UTF8')), 'hex') AS canonical_hash
  FROM maester.prompt_render('cv_chat', '{"language": "French", "text": "good morning", "register": "formal"}');
SELECT g.content, g.prompt_name, g.prompt_version, g.prompt_hash = r.hash AS same_hash
  FROM maester.llm_generate(prompt_name => 'cv_chat', model => 'cv-a',
         variables => '{"language": "French", "text": "good morning", "register": "formal"}') g,
       maester.prompt_render('cv_chat', '{"language": "French", "text": "good morning", "register": "formal"}') r;
SELECT pg_temp.last_body() -> 'system' AS system, pg_temp.last_body() -> 'messages' AS messages;
SELECT pg_temp.err($$ SELECT maester.llm_generate(prompt_name => 'cv_chat', model => 'cv-a', variables => '{"language": "French"}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(prompt_name => 'cv_chat', model => 'cv-a', system => 'x',
    variables => '{"language": "French", "text": "t", "register": "r"}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('cv_bad', 'text', messages => '[{"role": "user", "content": "x"}]') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('cv_bad', system_template => 's', messages => '[{"role": "user", "content": "x"}]') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('cv_bad', messages => '[{"role": "tool", "content": "x"}]') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('cv_bad', messages => '[{"role": "system", "content": "x"}]') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('cv_bad', messages => '[{"role": "user", "content": "x", "name": "n"}]') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('cv_bad', messages => '[{"role": "user", "content": "ok"}, {"role": "user", "content": "a { b"}]') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('cv_bad', messages => '{"role": "user", "content": "x"}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('cv_bad') $$);

-- (review) a tool loop goes on when the model wrote arguments that are not
-- JSON: they go back as the string they were
SELECT g2.content
  FROM maester.llm_generate('Weather?', 'cv-badargs') g1,
       maester.llm_generate(model => 'cv-o', messages => jsonb_build_array(
           jsonb_build_object('role', 'user', 'content', 'Weather?'),
           jsonb_build_object('role', 'assistant', 'content', NULL, 'tool_calls', g1.tool_calls),
           jsonb_build_object('role', 'tool', 'tool_call_id', g1.tool_calls -> 0 ->> 'id',
                              'content', 'error: your arguments were not JSON')),
         options => '{"tools": [{"name": "get_weather"}]}') g2;
SELECT pg_temp.last_body() -> 'messages' -> 1 -> 'tool_calls' -> 0 -> 'function' -> 'arguments' AS arguments_sent;
-- and at Anthropic (whose input is an object) under _raw
SELECT content FROM maester.llm_generate(model => 'cv-a', messages => '[
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "tool_calls": [{"id": "toolu_9", "name": "get_weather", "arguments": "{\"city\": \"Par"}]},
    {"role": "tool", "tool_call_id": "toolu_9", "content": "bad arguments"}]',
    options => '{"tools": [{"name": "get_weather"}]}');
SELECT pg_temp.last_body() -> 'messages' -> 1 -> 'content' -> 0 -> 'input' AS input_sent;
-- a turn that only calls tools is not held to the answer's schema
SELECT finish_reason, evaluation ->> 'status' AS status
  FROM maester.llm_generate(model => 'cv-o', messages => '[{"role": "user", "content": "Weather?"}]',
    options => '{"tools": [{"name": "get_weather", "strict": true, "parameters": {"type": "object"}}],
                 "response_format": {"type": "json_schema", "json_schema": {"name": "report",
                   "schema": {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}}}}');
SELECT pg_temp.last_body() -> 'tools' -> 0 -> 'function' -> 'strict' AS strict_sent;
-- tools from a prompt version's config, tool_choice from the call
SELECT version FROM maester.prompt_register('cv_wx', 'Weather in {city}?',
    config => '{"tools": [{"name": "get_weather", "parameters": {"type": "object"}}]}');
SELECT content, tool_calls IS NULL AS no_calls FROM maester.llm_generate(prompt_name => 'cv_wx', variables => '{"city": "Paris"}',
    model => 'cv-o', options => '{"tool_choice": "none"}');
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"tools": [{"name": "t"}], "extra": {"tools": []}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"extra": {"output_config": {}}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"tools": [{"name": "answer"}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"tools": [{"name": "t", "parameters": {"type": "string"}}]}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array"}}}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": "q"},
    {"role": "assistant", "tool_calls": [{"id": "a", "name": "t"}, {"id": "b", "name": "t"}]},
    {"role": "tool", "tool_call_id": "a", "content": "r"}, {"role": "user", "content": "and?"}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": "q"},
    {"role": "assistant", "tool_calls": [{"id": "a", "name": "t"}]}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": "q"},
    {"role": "assistant", "tool_calls": [{"id": "a", "name": "t"}]},
    {"role": "tool", "tool_call_id": "a", "content": "r"}, {"role": "tool", "tool_call_id": "a", "content": "r"}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": ""}]') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(messages => '[{"role": "user", "content": "q"},
    {"role": "assistant", "tool_calls": [{"id": "a", "name": "t"}, {"id": "a", "name": "t"}]}]') $$);
SELECT pg_temp.err(format($$ SELECT maester.llm_generate(messages => %L) $$, jsonb_build_array(
    jsonb_build_object('role', 'user', 'content', 'q'),
    jsonb_build_object('role', 'assistant', 'tool_calls',
        (SELECT jsonb_agg(jsonb_build_object('id', 'c' || i, 'name', 't')) FROM generate_series(1, 257) i)))));

-- what a model accepts (maester.model): sampling parameters it refuses
-- are left out, by its row or by the documented rule
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
VALUES ('cvcompat', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{}', 0);
INSERT INTO maester.model (name, provider, provider_model, unsupported_params, output_limit_param, structured_output) VALUES
    ('cv-o3', 'cvopenai', 'o3-mini', NULL, NULL, NULL),
    ('cv-o3-all', 'cvopenai', 'o3-mini-2025-01-31', '{}', NULL, NULL),
    ('cv-c45', 'cvanth', 'claude-sonnet-4-5-20250929', NULL, NULL, NULL),
    ('cv-c5', 'cvanth', 'claude-opus-5', NULL, NULL, 'native'),
    ('cv-c35', 'cvanth', 'claude-3-5-haiku-20241022', NULL, NULL, NULL),
    ('cv-proxy', 'cvcompat', 'o4-mini', NULL, 'max_completion_tokens', NULL),
    ('cv-grader', 'cvopenai', 'fault-verdict-pass', '{temperature}', NULL, NULL);
CREATE FUNCTION pg_temp.sent(model text) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE b jsonb;
BEGIN
  PERFORM maester.llm_generate('Hello.', model, max_tokens => 50,
      options => '{"temperature": 0.2, "top_p": 0.9, "stop": ["END"]}');
  b := pg_temp.last_body();
  RETURN jsonb_build_object('temperature', b -> 'temperature', 'top_p', b -> 'top_p',
                            'stop', COALESCE(b -> 'stop', b -> 'stop_sequences'),
                            'limit', COALESCE(b -> 'max_tokens', b -> 'max_completion_tokens'),
                            'limit_name', CASE WHEN b ? 'max_completion_tokens' THEN 'max_completion_tokens'
                                               WHEN b ? 'max_tokens' THEN 'max_tokens' END);
END $$;
SELECT m, pg_temp.sent(m) FROM unnest(ARRAY['cv-o', 'cv-o3', 'cv-o3-all', 'cv-c45', 'cv-c5', 'cv-c35', 'cv-proxy']) m;
-- Anthropic takes a temperature up to 1 (OpenAI up to 2): more is sent as 1
SELECT content IS NOT NULL AS answered FROM maester.llm_generate('Hi.', 'cv-c35', options => '{"temperature": 1.5}');
SELECT pg_temp.last_body() -> 'temperature' AS temperature_sent;
-- a grader on a model that refuses temperature is sent none (llm_rubric
-- asks for temperature 0)
SELECT maester.evaluate('The disk is full.', '{"llm_rubric": {"rubric": "Names the resource.", "model": "cv-grader"}}') ->> 'status' AS graded;
SELECT pg_temp.last_body() ? 'temperature' AS temperature_sent, pg_temp.last_body() -> 'model' AS grader;
-- structured output native at Anthropic: output_config.format, no tool
SELECT parsed FROM maester.llm_generate('Extract the city.', 'cv-c5', options => '{
    "response_format": {"type": "json_schema", "json_schema": {"name": "place",
      "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}}}');
SELECT pg_temp.last_body() -> 'output_config' AS output_config, pg_temp.last_body() ? 'tools' AS tools;
-- only known parameters and values
SELECT pg_temp.err($$ UPDATE maester.model SET unsupported_params = '{seed}' WHERE name = 'cv-o3' $$);
SELECT pg_temp.err($$ UPDATE maester.model SET output_limit_param = 'max_output' WHERE name = 'cv-o3' $$);
SELECT pg_temp.err($$ UPDATE maester.model SET structured_output = 'magic' WHERE name = 'cv-o3' $$);

-- usage details kept in the ledger: reasoning tokens, cache writes (and
-- Anthropic's by ttl), the service tier (the mock's shape-details, after
-- CompletionUsage and Anthropic's Usage)
INSERT INTO maester.model (name, provider, provider_model) VALUES
    ('cv-details', 'cvopenai', 'fault-shape-details'), ('cv-adetails', 'cvanth', 'fault-shape-details'),
    ('cv-cache', 'cvanth', 'claude-cvcache');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million,
                           cache_read_input_cost_per_million, cache_creation_input_cost_per_million)
VALUES ('fault-shape-details', '2020-01-01', 1, 10, 0.1, 1.25), ('claude-cvcache', '2020-01-01', 1, 10, 0.1, 1.25);
SELECT request_id AS o_rid FROM maester.llm_generate('hi', 'cv-details') \gset
SELECT request_id AS a_rid FROM maester.llm_generate('hi', 'cv-adetails') \gset
SELECT model_name, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens,
       reasoning_tokens, service_tier, cost_usd
  FROM maester.usage WHERE request_id IN (:'o_rid', :'a_rid') ORDER BY model_name;
-- (Anthropic: 1000 + 50 read + 400 written, 300 of them for an hour, at
-- twice the input price with no 1h price: 1000 x 1 + 50 x 0.1 + 100 x 1.25
-- + 300 x 2 = 1730 micro-dollars in, 200 x 10 out; OpenAI: 700 x 1 +
-- 200 x 0.1 + 100 x 1.25 in, 2000 out)

-- Anthropic prompt caching as an option: the system prompt, or the
-- conversation's prefix, marked with cache_control; written, then read
SELECT cache_write_tokens > 0 AS wrote, cached_input_tokens AS read
  FROM maester.llm_generate('Q1', 'cv-cache', system => repeat('Long instructions. ', 50),
                            options => '{"cache_control": "system"}');
SELECT pg_temp.last_body() -> 'system' -> 0 -> 'cache_control' AS marked;
SELECT cache_write_tokens AS wrote, cached_input_tokens > 0 AS read
  FROM maester.llm_generate('Q2', 'cv-cache', system => repeat('Long instructions. ', 50),
                            options => '{"cache_control": "system"}');
SELECT request_id AS c_rid FROM maester.llm_generate(model => 'cv-cache', messages => '[
    {"role": "user", "content": "Here is a long document: ..."},
    {"role": "assistant", "content": "Read."},
    {"role": "user", "content": "Summarize it."}]', options => '{"cache_control": {"at": "prefix", "ttl": "1h"}}') \gset
SELECT m -> 'role' AS role, m -> 'content' -> 0 -> 'cache_control' AS cache_control
  FROM jsonb_array_elements(pg_temp.last_body() -> 'messages') m;
SELECT cache_write_tokens > 0 AS wrote, cache_write_1h_tokens = cache_write_tokens AS hour
  FROM maester.usage WHERE request_id = :'c_rid';
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"cache_control": "everything"}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', options => '{"cache_control": {"ttl": "2h"}}') $$);

-- Azure OpenAI: the api-key header, the v1 API (the deployment as the
-- model), or deployment URLs with an api-version
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
VALUES ('cvazure', 'azure', :'mock_url', 'MAESTER_TEST_API_KEY', '{}', 0);
INSERT INTO maester.model (name, provider, provider_model) VALUES
    ('cv-az', 'cvazure', 'my-gpt-deployment'), ('cv-az-odd', 'cvazure', 'a/b?c');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('cv-az', '2020-01-01', 1, 10), ('cv-az-odd', '2020-01-01', 1, 10);
CREATE FUNCTION pg_temp.last_azure() RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('path', r -> 'path', 'model', r -> 'body' -> 'model',
                            'api_key', r -> 'headers' ? 'api-key',
                            'authorization', r -> 'headers' ? 'authorization',
                            'limit', CASE WHEN r -> 'body' ? 'max_completion_tokens' THEN 'max_completion_tokens' END)
    FROM (SELECT pg_temp.mock('/_mock/requests') -> -1 AS r) x $$;
SELECT content, provider FROM maester.llm_generate('Hello.', 'cv-az', max_tokens => 20);
SELECT pg_temp.last_azure();
UPDATE maester.provider SET api_version = '2024-10-21' WHERE name = 'cvazure';
SELECT content FROM maester.llm_generate('Hello.', 'cv-az', max_tokens => 20);
SELECT pg_temp.last_azure();
-- a deployment name cannot reach another path or query
SELECT content FROM maester.llm_generate('Hello.', 'cv-az-odd', max_tokens => 20);
SELECT pg_temp.last_azure() -> 'path' AS path;
SELECT pg_temp.err($$ UPDATE maester.provider SET api_version = '2024-10-21&x=1' WHERE name = 'cvazure' $$);

-- the ledger billed every call above, and none failed
SELECT count(*) > 0 AS calls, count(*) FILTER (WHERE status <> 'ok') AS failed
  FROM maester.usage WHERE tenant = 'conversation';
RESET maester.tenant;
-- later suites route these model ids by their own rows
DELETE FROM maester.model WHERE name LIKE 'cv-%';
