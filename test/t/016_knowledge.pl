# The knowledge worker across crashes and restarts, on pages of the
# PostgreSQL 15 manual (Debian's postgresql-doc-15):
#
# 1. A crash (SIGKILL of the knowledge worker: the postmaster restarts
#    everything) while a batch's embedding requests are in flight: after
#    recovery the worker goes on by itself; no document is lost; the
#    requests that were in flight are in the ledger (orphaned, charged at
#    their estimate); nothing is sent twice: the batch in flight is not
#    sent again by itself (its documents fail, interrupted), every other
#    document is indexed; kb_retry then sends that batch, and every chunk
#    has exactly one vector.
# 2. A clean restart with documents still queued: the worker is started
#    again by itself (nobody ingests) and finishes them.
# 3. The worker exits when it has nothing to do, and no knowledge worker
#    starts in a database without knowledge bases.
# 4. Retrieval on the whole manual with kb_eval and the glossary question
#    set (test/fixtures/glossary.json): recall@10, MRR, nDCG@10 per mode.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MaesterMock;

my $html = '/usr/share/doc/postgresql-doc-15/html';
plan skip_all => "no $html (Debian's postgresql-doc-15)" unless -d $html;

my $mock = MaesterMock->start;
my $url = $mock->url;
my $node = PostgreSQL::Test::Cluster->new('knowledge');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
restart_after_crash = on
});
$node->start;
sub sq { return $node->safe_psql('postgres', $_[0]); }

sq(qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold, backoff_base_ms)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{}', 0, 1);
	INSERT INTO maester.model (name, provider, provider_model, embedding_dimensions)
	VALUES ('slow-emb', 'mock', 'fault-latency-1500', NULL);
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('slow-emb', '2020-01-01', 0.02, 0);
	-- small chunks: several batches of 2,048, one after the other
	SELECT maester.kb_create('manual', 'slow-emb', '{"max_tokens": 32, "overlap_tokens": 0}', dimensions => 64);
	CREATE TABLE pages AS SELECT f FROM pg_ls_dir('$html') f WHERE f LIKE 'sql-%.html' ORDER BY f LIMIT 120;
});
my $inputs0 = $mock->stats->{embedding_inputs};
sq(q{SELECT count(maester.ingest('manual', f, pg_read_file('} . $html . q{/' || f), 'text/html')) FROM pages});

# 1. a crash with requests in flight, after some batches committed
ok($node->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM maester.chunk_embedding}), 'a first batch is stored');
ok($node->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM maester.usage WHERE status = 'pending'}), 'requests are in flight');
my $pid = sq(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'maester knowledge worker'});
ok($pid =~ /^\d+$/, 'the knowledge worker runs');
my $stored_before = sq(q{SELECT count(*) FROM maester.chunk_embedding});
kill 'KILL', $pid;
$node->poll_query_until('postgres', 'SELECT true') or die "no recovery";
ok($node->poll_query_until('postgres',
	q{SELECT maester.kb_wait('manual', '5 s') AND NOT EXISTS (SELECT FROM maester.document
	   WHERE stage NOT IN ('indexed', 'failed'))}, 't'), 'after the crash the worker goes on by itself');
is(sq(q{SELECT count(*) FROM maester.document}), 120, 'no document was lost');
my ($interrupted, $others) = split /\|/, sq(q{SELECT count(*) FILTER (WHERE stage = 'failed' AND error_class = 'interrupted'),
	count(*) FILTER (WHERE stage NOT IN ('indexed') AND error_class IS DISTINCT FROM 'interrupted') FROM maester.document});
cmp_ok($interrupted, '>=', 1, 'the documents of the batch in flight are set aside (interrupted)');
is($others, 0, 'every other document is indexed');
cmp_ok($stored_before, '>', 0, 'vectors were stored before the crash');
is(sq(q{SELECT count(*) FROM maester.usage WHERE status = 'pending'}), 0, 'no ledger row is left pending');
my ($orphaned, $orphan_cost) = split /\|/, sq(q{SELECT count(*), coalesce(bool_and(cost_usd = estimated_cost_usd), true)
	FROM maester.usage WHERE status = 'orphaned'});
cmp_ok($orphaned, '>=', 1, 'the requests in flight at the crash are in the ledger (orphaned)');
is($orphan_cost, 't', 'and charged at their estimate');
my ($chunks, $vectors) = split /\|/, sq(q{SELECT (SELECT count(*) FROM maester.chunk), (SELECT count(*) FROM maester.chunk_embedding)});
my $sent = $mock->stats->{embedding_inputs} - $inputs0;
cmp_ok($chunks, '>', 2 * 2048, 'several batches');
# nothing was sent twice: what was sent is what was stored, and the batch in
# flight (at most 2,048 chunks)
cmp_ok($sent - $vectors, '<=', 2048, 'only the batch in flight was sent without being stored');
cmp_ok($sent, '<=', $chunks, 'no chunk was sent twice');
# kb_retry sends the interrupted batch again (and nothing else)
sq(q{SELECT maester.kb_retry('manual')});
ok($node->poll_query_until('postgres',
	q{SELECT maester.kb_wait('manual', '5 s') AND NOT EXISTS (SELECT FROM maester.document WHERE stage <> 'indexed')}, 't'),
	'after kb_retry every document is indexed');
is(sq(q{SELECT count(*) FROM maester.chunk c WHERE (SELECT count(*) FROM maester.chunk_embedding e
        WHERE e.chunk_id = c.id) <> 1}), 0, 'every chunk has exactly one vector');
my $resent = $mock->stats->{embedding_inputs} - $inputs0 - $sent;
# sent twice in all: only the batch in flight at the crash, once more, when asked
cmp_ok($sent + $resent - $chunks, '<=', $sent - $vectors, 'kb_retry sent the batch in flight again, and nothing else twice');
note("chunks $chunks, inputs sent $sent before kb_retry ($vectors stored), $resent after; orphaned requests $orphaned; interrupted documents $interrupted");

# 2. a restart with documents waiting: the worker starts again by itself
sq(q{SELECT maester.kb_create('later', 'slow-emb', dimensions => 64)});
sq(q{SELECT count(maester.ingest('later', 'd' || i, 'Text of document ' || i || ' about vacuum and indexes.'))
       FROM generate_series(1, 30) i});
is(sq(q{SELECT count(*) FROM maester.document d JOIN maester.kb k ON k.id = d.kb_id
        WHERE k.name = 'later' AND d.stage = 'indexed'}), 0, 'documents wait when the server stops');
$node->stop('immediate');
$node->start;
# (a batch in flight at the stop is set aside, interrupted: kb_retry sends it)
ok($node->poll_query_until('postgres',
	q{SELECT NOT EXISTS (SELECT FROM maester.document d JOIN maester.kb k ON k.id = d.kb_id
	   WHERE k.name = 'later' AND d.stage NOT IN ('indexed', 'failed'))}),
	'after a restart the worker goes on with them without a new ingest');
sq(q{SELECT maester.kb_retry('later')});
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 30 FROM maester.document d JOIN maester.kb k ON k.id = d.kb_id
	   WHERE k.name = 'later' AND d.stage = 'indexed'}),
	'and they are all indexed');

# 3. idle: the worker exits; another database gets none
ok($node->poll_query_until('postgres',
	q{SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'maester knowledge worker')}),
	'the idle knowledge worker exits');
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION maester');
sleep 2;
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'maester knowledge worker'}), 0,
	'no knowledge worker for a database without knowledge bases');

# 4. retrieval on the whole manual, measured with kb_eval on the glossary
# question set (test/fixtures/glossary.json: term -> the pages its
# definition links to); the mock's embeddings are word hashes: lexical
my $cases = do { local $/; open(my $fh, '<', "$FindBin::RealBin/../fixtures/glossary.json") or die; <$fh> };
$cases =~ s/'/''/g;
sq(qq{INSERT INTO maester.model (name, provider, provider_model) VALUES ('fast-emb', 'mock', 'text-embedding-3-small');
	SELECT maester.kb_create('manual-all', 'fast-emb', dimensions => 64);
	SELECT count(maester.ingest('manual-all', f, pg_read_file('$html/' || f), 'text/html'))
	  FROM pg_ls_dir('$html') f WHERE f LIKE '%.html'});
ok($node->poll_query_until('postgres', q{SELECT maester.kb_wait('manual-all', '10 s')}), 'the manual is indexed');
my $eval = sq(qq{SELECT string_agg(mode || ' ' || cases || ' ' || round(recall::numeric, 3) || ' ' || round(mrr::numeric, 3)
	|| ' ' || round(ndcg::numeric, 3), E'\n' ORDER BY mode) FROM maester.kb_eval('manual-all', '$cases', 10)});
note("kb_eval on the glossary (mode cases recall\@10 MRR nDCG\@10):\n$eval");
my %m = map { my @f = split / /; ($f[0] => { cases => $f[1], recall => $f[2], mrr => $f[3], ndcg => $f[4] }) } split /\n/, $eval;
is($m{fts}{cases}, 61, 'every glossary case was asked');
cmp_ok($m{fts}{recall}, '>=', 0.5, 'full text finds the defining page for half the terms or more');
cmp_ok($m{vector}{recall}, '>=', 0.3, 'vector search (word-hash embeddings) finds a third or more');
cmp_ok($m{hybrid}{recall}, '>=', $m{vector}{recall}, 'hybrid finds at least what vector search finds');
cmp_ok($m{hybrid}{mrr}, '>', 0, 'MRR measured');
is(sq(q{SELECT count(DISTINCT run) || ' ' || count(*) FROM maester.kb_eval_run}), '1 3', 'the run is stored, a row per mode');

$node->stop;
$mock->stop;
done_testing();
