# How the resident worker writes spans (src/spanwrite.c): straight into
# maester.span and its indexes while the table is as the extension made
# it, the user's own indexes included; through INSERT ... ON CONFLICT DO
# NOTHING when it has a trigger or a column of the user's (which then
# fire and get their defaults), or when storing a chunk directly fails
# on a unique index of the user's (the conflicting spans are skipped, the
# others kept, nothing counted as dropped); and directly again once the
# table is back as it was.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MaesterMock;

my $mock = MaesterMock->start;
my $url = $mock->url;
my $node = PostgreSQL::Test::Cluster->new('spanwrite');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
});
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, max_attempts)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%}', 1);
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('mock-1', '2020-01-01', 1, 2);
});

my $fallback = qr/maester worker writes a chunk of spans with INSERT \.\.\. ON CONFLICT DO NOTHING: duplicate key value violates unique constraint "span_one_name"/;

# a traced call; returns its trace id once the worker has written (or
# skipped) its six spans: llm_generate, model_route, budget_check,
# model_generate, cost_metering, evaluation
my $per_call = 6;
sub traced_call
{
	my ($prompt, $traceparent) = @_;
	my $set = $traceparent ? "SET maester.traceparent = '$traceparent';" : '';
	my $before = $node->safe_psql('postgres',
		'SELECT spans_written + spans_dropped FROM maester.worker_status()');
	my $trace = $node->safe_psql('postgres',
		"$set SELECT trace_id FROM maester.llm_generate('$prompt', 'mock-1')");
	$node->poll_query_until('postgres', qq{
		SELECT spans_written + spans_dropped >= $before + $per_call FROM maester.worker_status()})
	  or die "the spans of '$prompt' were not written";
	return $trace;
}

sub spans_of
{
	my ($trace, $where) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM maester.span WHERE trace_id = '$trace'" . ($where // ''));
}

# --- direct: every span, with the columns an INSERT would give it ---
my $t1 = traced_call('direct');
my $n = spans_of($t1);
is($n, $per_call, 'a call writes its spans');
is($node->safe_psql('postgres', qq{
	SELECT count(*) FILTER (WHERE parent_span_id IS NULL AND request_id IS NOT NULL AND name = 'llm_generate')
	       || '/' || count(*) FILTER (WHERE parent_span_id IS NOT NULL AND request_id IS NULL)
	       || '/' || count(DISTINCT seq) || '/' || bool_and(jsonb_typeof(attributes) = 'object')
	       || '/' || bool_and(started_at <= now() AND duration_us >= 0 AND tenant = 'default')
	  FROM maester.span WHERE trace_id = '$t1'}),
	'1/' . ($n - 1) . "/$n/true/true",
	'the root has the request id and no parent, the others a parent; each its own seq; attributes are jsonb');
is($node->safe_psql('postgres', qq{
	SELECT attributes ->> 'gen_ai.request.model' FROM maester.span
	 WHERE trace_id = '$t1' AND name = 'model_generate'}),
	'mock-1', 'the GenAI attributes are there');

# the user's own index, on an expression and partial, is kept up to date
$node->safe_psql('postgres', q{
	CREATE INDEX span_by_model ON maester.span ((attributes ->> 'gen_ai.request.model'))
	 WHERE name = 'model_generate'});
my $t2 = traced_call('indexed');
is($node->safe_psql('postgres', qq{
	SET enable_seqscan = off; SET enable_bitmapscan = off;
	SELECT count(*) FROM maester.span
	 WHERE attributes ->> 'gen_ai.request.model' = 'mock-1' AND name = 'model_generate'
	   AND trace_id IN ('$t1', '$t2')}),
	'2', 'an index of the user\'s (expression, partial) has the directly written spans');
like($node->safe_psql('postgres', q{
	SET enable_seqscan = off; SET enable_bitmapscan = off;
	EXPLAIN (COSTS OFF) SELECT count(*) FROM maester.span
	 WHERE attributes ->> 'gen_ai.request.model' = 'mock-1' AND name = 'model_generate'}),
	qr/Index Scan using span_by_model/, '(and the query above read that index)');
my ($ret, $out, $err) = $node->psql('postgres', q{
	CREATE EXTENSION amcheck;
	SELECT bt_index_check(i::regclass, true)
	  FROM unnest(ARRAY['maester.span_pkey', 'maester.span_seq', 'maester.span_by_model']) i});
is($ret . $err, '0', 'amcheck finds the span indexes sound, with every span in each');

# --- a trigger and a column of the user's: the INSERT, which honours them ---
$node->safe_psql('postgres', q{
	CREATE TABLE span_audit (trace_id text, span_id text);
	CREATE FUNCTION span_audit() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN INSERT INTO public.span_audit VALUES (NEW.trace_id, NEW.span_id); RETURN NEW; END $$;
	CREATE TRIGGER span_audit AFTER INSERT ON maester.span FOR EACH ROW EXECUTE FUNCTION span_audit();
	ALTER TABLE maester.span ADD COLUMN note text DEFAULT 'the default'});
my $t3 = traced_call('with a trigger');
my $n3 = spans_of($t3);
is($n3, $per_call, 'with a trigger and a column of the user\'s, the spans are written');
is($node->safe_psql('postgres', "SELECT count(*) FROM span_audit WHERE trace_id = '$t3'"),
	$n3, 'the trigger fired for each span');
is(spans_of($t3, " AND note = 'the default'"), $n3, 'the added column got its default');
is($node->safe_psql('postgres', qq{
	SELECT count(*) FILTER (WHERE parent_span_id IS NULL AND request_id IS NOT NULL)
	       || '/' || count(*) FILTER (WHERE attributes ->> 'gen_ai.request.model' = 'mock-1'
	                                   AND name = 'model_generate')
	       || '/' || bool_and(jsonb_typeof(attributes) = 'object')
	  FROM maester.span WHERE trace_id = '$t3'}),
	'1/1/true', 'through the INSERT too: the root\'s request id and no parent, jsonb attributes');
$node->safe_psql('postgres', q{
	DROP TRIGGER span_audit ON maester.span; ALTER TABLE maester.span DROP COLUMN note});

# --- a unique index of the user's that spans break: the direct chunk
# fails, the INSERT skips what conflicts and keeps the rest ---
$node->safe_psql('postgres', q{CREATE UNIQUE INDEX span_one_name ON maester.span (trace_id, name)});
my $offset = -s $node->logfile;
my $tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
my $shared = traced_call('first in a trace', $tp);
is($shared, '4bf92f3577b34da6a3ce929d0e0e4736', 'the call joined the application\'s trace');
my $nshared = spans_of($shared);
is($nshared, $per_call, 'the first call of the trace wrote its spans');
# the second call of the same trace names the same steps: all conflict
traced_call('second in the trace', $tp);
is(spans_of($shared), $nshared, 'the second call\'s spans, conflicting, were skipped');
ok($node->wait_for_log($fallback, $offset),
	'the worker says, once, that it writes the chunk with the INSERT');
my $t4 = traced_call('after the conflict');
is(spans_of($t4), $per_call, 'a call outside that trace still has all its spans');
is($node->safe_psql('postgres', 'SELECT spans_dropped FROM maester.trace_status()'),
	'0', 'no span counted as dropped');
unlike(slurp_file($node->logfile, $offset), qr/dropped \d+ spans/, 'no WARNING of dropped spans');

# --- back as it was: directly again (the dropped column of above no
# bar), which the next conflict shows: the line comes again only after a
# chunk went in directly ---
$node->safe_psql('postgres', q{DROP INDEX maester.span_one_name});
my $t5 = traced_call('again direct');
is(spans_of($t5), $per_call, 'with the table as it was, the spans are written');
is(spans_of($t5, " AND seq > (SELECT max(seq) FROM maester.span WHERE trace_id = '$t4')"),
	spans_of($t5), 'after the spans before them');
$offset = -s $node->logfile;
$node->safe_psql('postgres', q{CREATE UNIQUE INDEX span_one_name ON maester.span (trace_id, name)});
traced_call('third in the trace', $tp);
is(spans_of($shared), $nshared, 'a third call of the trace: its spans skipped too');
ok($node->wait_for_log($fallback, $offset),
	'the line again: the spans in between had gone in directly, the dropped column notwithstanding');

$node->stop;
done_testing();
