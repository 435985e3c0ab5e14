-- The worst case reserved before a call counts the bytes the provider
-- receives, which are UTF-8 whatever the database's encoding: in a LATIN1
-- database "é" is one byte but goes out as two (test/bench/tokens.sh found
-- real text in LATIN1, WIN1251 and ISO_8859_7 above a bound counting
-- server-encoding bytes)
\getenv mock_url MAESTER_MOCK_URL
CREATE DATABASE encoding_regress ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
\c encoding_regress
SET client_encoding = 'UTF8';
CREATE EXTENSION maester;
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
VALUES ('encmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{encmock-%}', 0);
-- one USD per input token, output free: the estimate is the token bound
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('encmock-1', '2020-01-01', 1000000, 0);
SELECT octet_length(repeat('é', 100)) AS latin1_bytes,
       octet_length(convert_to(repeat('é', 100), 'UTF8')) AS utf8_bytes;
SELECT provider FROM maester.llm_generate(repeat('é', 100), 'encmock-1', max_tokens => 5);
-- 200 UTF-8 bytes + 16 for the chat format
SELECT estimated_cost_usd FROM maester.usage;
\c contrib_regression
DROP DATABASE encoding_regress;
