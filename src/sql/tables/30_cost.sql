-- src/sql/tables/30_cost.sql: Prices (effective-dated, immutable) with the shipped list prices; the cost type.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

CREATE TABLE maester.price (
    model                                 text NOT NULL,
    valid_from                            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    input_cost_per_million                numeric NOT NULL CHECK (input_cost_per_million OPERATOR(pg_catalog.>=) 0 AND input_cost_per_million OPERATOR(pg_catalog.<=) 1000000),
    output_cost_per_million               numeric NOT NULL CHECK (output_cost_per_million OPERATOR(pg_catalog.>=) 0 AND output_cost_per_million OPERATOR(pg_catalog.<=) 1000000),
    cache_read_input_cost_per_million     numeric CHECK (cache_read_input_cost_per_million OPERATOR(pg_catalog.>=) 0 AND cache_read_input_cost_per_million OPERATOR(pg_catalog.<=) 1000000),
    cache_creation_input_cost_per_million numeric CHECK (cache_creation_input_cost_per_million OPERATOR(pg_catalog.>=) 0 AND cache_creation_input_cost_per_million OPERATOR(pg_catalog.<=) 1000000),
    currency                              text NOT NULL DEFAULT 'USD' CHECK (currency OPERATOR(pg_catalog.=) 'USD'),
    source                                text,
    PRIMARY KEY (model, valid_from),
    shipped                               boolean NOT NULL DEFAULT false,
    cache_creation_1h_input_cost_per_million numeric CHECK (cache_creation_1h_input_cost_per_million OPERATOR(pg_catalog.>=) 0 AND cache_creation_1h_input_cost_per_million OPERATOR(pg_catalog.<=) 1000000)
);

COMMENT ON TABLE maester.price IS
    'Effective-dated model prices in USD per 1M tokens (field names after LiteLLM''s cost map: input, output, cache_read_input, cache_creation_input). Rows are immutable: a price change is a new row with a later valid_from, so a new price never changes what a past call cost.';
COMMENT ON COLUMN maester.price.model IS 'Model name as providers report it; also prices dated snapshots (gpt-4.1-mini-2025-04-14, claude-sonnet-4-5-20250929) of this name.';
COMMENT ON COLUMN maester.price.valid_from IS 'The price applies to calls from this time until the next row''s valid_from.';
COMMENT ON COLUMN maester.price.cache_read_input_cost_per_million IS 'Price of prompt tokens read from the provider''s cache (OpenAI cached input, Anthropic cache reads); NULL: the input price.';
COMMENT ON COLUMN maester.price.cache_creation_input_cost_per_million IS 'Price of prompt tokens written to the cache (Anthropic); NULL: the input price.';
COMMENT ON COLUMN maester.price.cache_creation_1h_input_cost_per_million IS 'Price of prompt tokens written to the cache for an hour (Anthropic''s ttl 1h); NULL: twice the input price, Anthropic''s published rate (5-minute writes are cache_creation_input_cost_per_million).';
COMMENT ON COLUMN maester.price.input_cost_per_million IS 'USD per 1M input tokens: from 0 to 1,000,000 (NaN and Infinity are refused, like the other prices).';
COMMENT ON COLUMN maester.price.shipped IS 'True for the list prices maester ships; pg_dump keeps every row where it is false.';

-- List prices as published by OpenAI and Anthropic (USD per 1M tokens)
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million,
                           cache_read_input_cost_per_million, cache_creation_input_cost_per_million, source, shipped) VALUES
    ('gpt-4.1',           '2025-04-14', 2.00,  8.00,  0.50,  NULL,  'openai.com/api/pricing', true),
    ('gpt-4.1-mini',      '2025-04-14', 0.40,  1.60,  0.10,  NULL,  'openai.com/api/pricing', true),
    ('gpt-4.1-nano',      '2025-04-14', 0.10,  0.40,  0.025, NULL,  'openai.com/api/pricing', true),
    ('gpt-4o',            '2024-05-13', 2.50,  10.00, 1.25,  NULL,  'openai.com/api/pricing', true),
    ('gpt-4o-mini',       '2024-07-18', 0.15,  0.60,  0.075, NULL,  'openai.com/api/pricing', true),
    ('claude-sonnet-4-5', '2025-09-29', 3.00,  15.00, 0.30,  3.75,  'anthropic.com/pricing', true),
    ('claude-haiku-4-5',  '2025-10-15', 1.00,  5.00,  0.10,  1.25,  'anthropic.com/pricing', true),
    ('claude-opus-4-1',   '2025-08-05', 15.00, 75.00, 1.50,  18.75, 'anthropic.com/pricing', true),
    ('text-embedding-3-small', '2024-01-25', 0.02, 0, NULL, NULL, 'openai.com/api/pricing', true),
    ('text-embedding-3-large', '2024-01-25', 0.13, 0, NULL, NULL, 'openai.com/api/pricing', true);

CREATE TYPE maester.cost AS (
    model           text,
    input_tokens    bigint,
    output_tokens   bigint,
    total_tokens    bigint,
    input_cost_usd  numeric,
    output_cost_usd numeric,
    total_cost_usd  numeric,
    unit            text
);

COMMENT ON TYPE maester.cost IS
    'The articles'' cost shape: each part rounded half-up to 6 decimal places, the total the sum of the shown parts.';
