-- src/sql/tables/95_knowledge.sql: Knowledge bases: embedding profiles,
-- knowledge bases, documents (versioned), chunks, chunk embeddings, the
-- tables a knowledge base keeps in sync.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

-- What makes a vector: immutable, like a prompt version.  "Which embedding
-- version was used?" is a column of every embedding, never a guess.
CREATE TABLE maester.embedding_profile (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model            text NOT NULL CHECK (model OPERATOR(pg_catalog.<>) ''),
    dimensions       integer CHECK (dimensions OPERATOR(pg_catalog.>) 0),
    normalize        boolean NOT NULL DEFAULT true,
    document_prefix  text NOT NULL DEFAULT '',
    query_prefix     text NOT NULL DEFAULT '',
    profile_hash     text NOT NULL UNIQUE,
    served_model     text,
    served_dimensions integer,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE maester.embedding_profile IS
    'How a knowledge base''s vectors are made: the model asked for, the dimensions, normalisation and the prefixes put before documents and queries; profile_hash is the SHA-256 of these. Immutable, except that served_model and served_dimensions are set once, by the first embedding: vectors of one profile never come from two models.';
COMMENT ON COLUMN maester.embedding_profile.served_model IS 'The model id the provider said made the profile''s first vectors; an answer from another model (a fallback) is refused, so one profile never mixes vector spaces.';
COMMENT ON COLUMN maester.embedding_profile.served_dimensions IS 'The length of the profile''s vectors, from its first embedding.';

CREATE TABLE maester.kb (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant           text NOT NULL,
    name             text NOT NULL CHECK (name OPERATOR(pg_catalog.<>) '' AND
                                          pg_catalog.length(name) OPERATOR(pg_catalog.<=) 200 AND
                                          name OPERATOR(pg_catalog.!~) '[[:cntrl:]]'),
    owner            name NOT NULL,
    profile_id       bigint NOT NULL REFERENCES maester.embedding_profile (id),
    next_profile_id  bigint REFERENCES maester.embedding_profile (id),
    chunking         jsonb NOT NULL,
    fts_config       regconfig NOT NULL,
    paused_reason    text,
    paused_until     timestamptz,
    pauses           integer NOT NULL DEFAULT 0,
    max_source_bytes integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (tenant, name)
);

COMMENT ON TABLE maester.kb IS
    'Knowledge bases (maester.kb_create): a tenant''s documents, chunked and embedded in the background under one active embedding profile. Row-level security by tenant.';
COMMENT ON COLUMN maester.kb.owner IS 'The role that created it: the embedding calls run as this role and the kb''s tenant (its budgets, its ledger rows).';
COMMENT ON COLUMN maester.kb.profile_id IS 'The active embedding profile: the one retrieval uses.';
COMMENT ON COLUMN maester.kb.next_profile_id IS 'The profile kb_reindex builds in the background; it becomes profile_id at once when every current document has its vectors.';
COMMENT ON COLUMN maester.kb.paused_reason IS 'Why the queue waits (a failure that belongs to no document: unknown model, missing key, open circuit, budget); NULL when it runs. No document''s retries are charged for it.';
COMMENT ON COLUMN maester.kb.max_source_bytes IS 'The most UTF-8 bytes one of its chunks takes as a numbered source of maester.ask (title, section path and text), over every chunk it ever had: what ask reserves per source against budgets before anything is sent.';
COMMENT ON COLUMN maester.kb.paused_until IS 'When the paused queue is tried again (backing off, up to 10 minutes); kb_retry tries at once.';

CREATE TABLE maester.document (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kb_id            bigint NOT NULL REFERENCES maester.kb (id) ON DELETE CASCADE,
    tenant           text NOT NULL,
    external_id      text NOT NULL CHECK (external_id OPERATOR(pg_catalog.<>) ''),
    version          integer NOT NULL,
    content_hash     text NOT NULL,
    mime             text NOT NULL,
    title            text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    content          text,
    content_binary   bytea,
    parsed           text,
    stage            text NOT NULL DEFAULT 'queued'
        CHECK (stage OPERATOR(pg_catalog.=) ANY
               (ARRAY['queued', 'parsed', 'chunked', 'embedded', 'indexed', 'failed'])),
    current          boolean NOT NULL DEFAULT false,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    error_class      text,
    error_message    text,
    source           regclass,
    trace_id         text NOT NULL,
    span_id          text NOT NULL,
    parent_span_id   text,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    indexed_at       timestamptz,
    superseded_at    timestamptz,
    CHECK ((content IS NULL) OPERATOR(pg_catalog.<>) (content_binary IS NULL)),
    UNIQUE (kb_id, external_id, version)
);

CREATE INDEX document_work ON maester.document (kb_id, id)
    WHERE stage OPERATOR(pg_catalog.<>) ALL (ARRAY['indexed', 'failed']);
CREATE UNIQUE INDEX document_current ON maester.document (kb_id, external_id) WHERE current;

COMMENT ON TABLE maester.document IS
    'Documents of the knowledge bases, one row per version (maester.ingest, maester.kb_sync): the source, its parsed text (what citations point into) and the stage it reached. The current version answers; a new version becomes current when it is indexed. Row-level security by tenant.';
COMMENT ON COLUMN maester.document.content_hash IS 'SHA-256 (hex) of the source as given (text in UTF-8, or the bytes): the same content again is no new version.';
COMMENT ON COLUMN maester.document.parsed IS 'The text the parser made of the source (Markdown-like: headings, paragraphs, lists, fenced code): chunk offsets are characters into it.';
COMMENT ON COLUMN maester.document.stage IS 'queued, parsed, chunked, embedded (every chunk has its vector), indexed (current and searchable), failed (see error_class and error_message; maester.kb_retry queues it again).';
COMMENT ON COLUMN maester.document.current IS 'True for the version that answers (at most one per external id); false for a version still in the pipeline and for superseded ones.';
COMMENT ON COLUMN maester.document.trace_id IS 'The document''s trace: the ingesting transaction''s maester.traceparent, or a new one. Its spans (kb_ingest, its root, then kb_parse, kb_chunk, kb_embed, kb_index) are in maester.span; kb_embed names the trace of the embedding call that made its vectors.';
COMMENT ON COLUMN maester.document.source IS 'The table kb_sync keeps this document in sync with (NULL: maester.ingest).';

CREATE TABLE maester.chunk (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id      bigint NOT NULL REFERENCES maester.document (id) ON DELETE CASCADE,
    kb_id            bigint NOT NULL,
    tenant           text NOT NULL,
    seq              integer NOT NULL,
    heading_path     text[] NOT NULL DEFAULT '{}',
    heading          text NOT NULL DEFAULT '',
    start_offset     integer NOT NULL,
    end_offset       integer NOT NULL,
    token_estimate   integer NOT NULL,
    content          text NOT NULL,
    content_hash     bytea NOT NULL,
    fts_config       regconfig NOT NULL,
    tsv              tsvector GENERATED ALWAYS AS
        (pg_catalog.setweight(pg_catalog.to_tsvector(fts_config, heading), 'A') OPERATOR(pg_catalog.||)
         pg_catalog.setweight(pg_catalog.to_tsvector(fts_config, content), 'B')) STORED,
    UNIQUE (document_id, seq)
);

CREATE INDEX chunk_tsv ON maester.chunk USING gin (tsv);
CREATE INDEX chunk_reuse ON maester.chunk (kb_id, content_hash);

COMMENT ON TABLE maester.chunk IS
    'Passages of the documents'' parsed text, cut by structure (sections, paragraphs, sentences) within the kb''s token bound: what is embedded and searched, and what a citation points at. Row-level security by tenant.';
COMMENT ON COLUMN maester.chunk.heading_path IS 'The headings the passage is under, outermost first.';
COMMENT ON COLUMN maester.chunk.start_offset IS 'Where the passage starts in document.parsed: characters, from 0 (content = substr(parsed, start_offset + 1, end_offset - start_offset)).';
COMMENT ON COLUMN maester.chunk.token_estimate IS 'maester.estimate_tokens(content): a conservative estimate of OpenAI''s token count.';
COMMENT ON COLUMN maester.chunk.content_hash IS 'SHA-256 of content: a chunk of a new version with the text of an embedded one takes its vector instead of being embedded again.';
COMMENT ON COLUMN maester.chunk.tsv IS 'Full-text vector in the kb''s configuration: headings weighted A, text B.';

CREATE TABLE maester.chunk_embedding (
    profile_id       bigint NOT NULL REFERENCES maester.embedding_profile (id),
    chunk_id         bigint NOT NULL REFERENCES maester.chunk (id) ON DELETE CASCADE,
    kb_id            bigint NOT NULL,
    document_id      bigint NOT NULL,
    live             boolean NOT NULL DEFAULT false,
    tenant           text NOT NULL,
    embedding        real[] NOT NULL,
    PRIMARY KEY (profile_id, chunk_id)
);
-- vectors are scanned, never compressed or moved out of line (TOASTed
-- vectors are 3-6x slower to scan)
ALTER TABLE maester.chunk_embedding ALTER COLUMN embedding SET STORAGE PLAIN;
CREATE INDEX chunk_embedding_chunk ON maester.chunk_embedding (chunk_id);
CREATE INDEX chunk_embedding_kb ON maester.chunk_embedding (kb_id, profile_id) WHERE live;
CREATE INDEX chunk_embedding_document ON maester.chunk_embedding (document_id);

COMMENT ON TABLE maester.chunk_embedding IS
    'A chunk''s vector under one embedding profile (real[], stored PLAIN: in line, uncompressed). A chunk may have vectors of two profiles while kb_reindex runs. Row-level security by tenant.';
COMMENT ON COLUMN maester.chunk_embedding.live IS 'Its document is the current version: what search scans (a version still in the pipeline has vectors that do not answer yet).';

CREATE TABLE maester.kb_source (
    kb_id            bigint NOT NULL REFERENCES maester.kb (id) ON DELETE CASCADE,
    source           regclass NOT NULL,
    id_column        name NOT NULL,
    content_column   name NOT NULL,
    title_column     name,
    metadata_columns name[],
    mime             text NOT NULL DEFAULT 'text/plain',
    content_is_bytea boolean NOT NULL DEFAULT false,
    synced_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (kb_id, source)
);

COMMENT ON TABLE maester.kb_source IS
    'Tables maester.kb_sync keeps in knowledge bases: their rows are documents (external id: the id column''s text), kept current by statement-level triggers.';

ALTER TABLE maester.kb ENABLE ROW LEVEL SECURITY;
CREATE POLICY kb_admin ON maester.kb FOR ALL TO maester_admin USING (true);
CREATE POLICY kb_tenant ON maester.kb FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER TABLE maester.document ENABLE ROW LEVEL SECURITY;
CREATE POLICY document_admin ON maester.document FOR ALL TO maester_admin USING (true);
CREATE POLICY document_tenant ON maester.document FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER TABLE maester.chunk ENABLE ROW LEVEL SECURITY;
CREATE POLICY chunk_admin ON maester.chunk FOR ALL TO maester_admin USING (true);
CREATE POLICY chunk_tenant ON maester.chunk FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER TABLE maester.chunk_embedding ENABLE ROW LEVEL SECURITY;
CREATE POLICY chunk_embedding_admin ON maester.chunk_embedding FOR ALL TO maester_admin USING (true);
CREATE POLICY chunk_embedding_tenant ON maester.chunk_embedding FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER TABLE maester.kb_source ENABLE ROW LEVEL SECURITY;
CREATE POLICY kb_source_admin ON maester.kb_source FOR ALL TO maester_admin USING (true);
ALTER TABLE maester.embedding_profile ENABLE ROW LEVEL SECURITY;
CREATE POLICY embedding_profile_admin ON maester.embedding_profile FOR ALL TO maester_admin USING (true);
CREATE POLICY embedding_profile_tenant ON maester.embedding_profile FOR SELECT TO maester_user, maester_reader
    USING (EXISTS (SELECT FROM maester.kb k WHERE embedding_profile.id OPERATOR(pg_catalog.=) ANY (ARRAY[k.profile_id, k.next_profile_id])));
CREATE POLICY kb_source_tenant ON maester.kb_source FOR SELECT TO maester_user, maester_reader
    USING (EXISTS (SELECT FROM maester.kb k WHERE k.id OPERATOR(pg_catalog.=) kb_id));

-- A hit of maester.search
CREATE TYPE maester.search_hit AS (
    rank              integer,
    chunk_id          bigint,
    document_id       bigint,
    document_version  integer,
    external_id       text,
    title             text,
    heading_path      text[],
    start_offset      integer,
    end_offset        integer,
    snippet           text,
    score             double precision,
    vector_rank       integer,
    vector_similarity double precision,
    fts_rank          integer,
    fts_score         double precision,
    metadata          jsonb,
    content           text
);

COMMENT ON TYPE maester.search_hit IS
    'A hit of maester.search: the passage (chunk, its document version, section path, character offsets into the parsed text, a snippet), the fused score, and each branch''s rank and raw score (NULL when the branch did not find it).';

-- Retrieval evaluations (maester.kb_eval): one row per mode of a run
CREATE TABLE maester.kb_eval_run (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run         uuid NOT NULL,
    tenant      text NOT NULL,
    kb_id       bigint NOT NULL REFERENCES maester.kb (id) ON DELETE CASCADE,
    profile_id  bigint NOT NULL REFERENCES maester.embedding_profile (id),
    mode        text NOT NULL,
    k           integer NOT NULL,
    cases       integer NOT NULL,
    recall      double precision,
    mrr         double precision,
    ndcg        double precision,
    details     jsonb NOT NULL DEFAULT '[]',
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by  name NOT NULL
);

COMMENT ON TABLE maester.kb_eval_run IS
    'Retrieval evaluations (maester.kb_eval): per run and search mode, recall@k, MRR and nDCG@k over the cases, with the profile the kb had, so that profiles and modes can be compared. Row-level security by tenant.';
COMMENT ON COLUMN maester.kb_eval_run.details IS 'Per case: the query, the relevant external ids, the documents found in rank order, and the rank of the first relevant one.';

ALTER TABLE maester.kb_eval_run ENABLE ROW LEVEL SECURITY;
CREATE POLICY kb_eval_run_admin ON maester.kb_eval_run FOR ALL TO maester_admin USING (true);
CREATE POLICY kb_eval_run_tenant ON maester.kb_eval_run FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));

-- Embedding batches in flight (the knowledge worker's)
CREATE TABLE maester.kb_batch (
    trace_id    text PRIMARY KEY,
    kb_id       bigint NOT NULL REFERENCES maester.kb (id) ON DELETE CASCADE,
    profile_id  bigint NOT NULL,
    documents   bigint[] NOT NULL,
    chunks      integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE maester.kb_batch IS
    'Embedding batches in flight: made durable before the knowledge worker sends one, deleted in the transaction that stores its vectors. One left after a crash was sent and may have been billed: it is not sent again by itself (its documents fail with error_class interrupted, or a reindex pauses); maester.kb_retry sends it again. Admins only.';

ALTER TABLE maester.kb_batch ENABLE ROW LEVEL SECURITY;
CREATE POLICY kb_batch_admin ON maester.kb_batch FOR ALL TO maester_admin USING (true);
