-- src/sql/tables/90_tracing.sql: Spans of traced calls, written by the span writer.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

CREATE TABLE maester.span (
    trace_id       text NOT NULL,
    span_id        text NOT NULL,
    parent_span_id text,
    name           text NOT NULL,
    started_at     timestamptz NOT NULL,
    duration_us    bigint NOT NULL,
    status         text NOT NULL,
    attributes     jsonb NOT NULL DEFAULT '{}',
    tenant         text NOT NULL,
    request_id     uuid,
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (trace_id, span_id)
);

CREATE INDEX span_started_brin ON maester.span USING brin (started_at);
CREATE INDEX span_seq ON maester.span (seq);

COMMENT ON TABLE maester.span IS
    'The steps of every sampled call (llm_generate, prompt_render, model_route, budget_check, model_generate per attempt, cost_metering, evaluation), with OpenTelemetry GenAI attribute names; written by the ledger worker, so they survive the caller''s rollback. Row-level security by tenant.';
COMMENT ON COLUMN maester.span.trace_id IS '32 lowercase hex digits: the application''s trace (maester.traceparent) or a new one.';
COMMENT ON COLUMN maester.span.span_id IS '16 lowercase hex digits.';
COMMENT ON COLUMN maester.span.parent_span_id IS 'The parent span: the call''s root span, or for the root the application''s span (NULL without a traceparent).';
COMMENT ON COLUMN maester.span.duration_us IS 'Duration in microseconds.';
COMMENT ON COLUMN maester.span.attributes IS 'gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model, gen_ai.response.model, gen_ai.usage.input_tokens, ..., maester.prompt.version, maester.prompt.hash, maester.cost_usd, maester.evaluation.status.';
COMMENT ON COLUMN maester.span.request_id IS 'The call''s request id (on the root span).';
COMMENT ON COLUMN maester.span.seq IS 'Order of writing (the OTLP exporter''s position).';

ALTER TABLE maester.span ENABLE ROW LEVEL SECURITY;
CREATE POLICY span_admin ON maester.span FOR ALL TO maester_admin USING (true);
CREATE POLICY span_tenant ON maester.span FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
