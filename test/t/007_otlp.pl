# The OTLP exporter: with maester.otlp_endpoint set, every span written
# from then on reaches the collector as OTLP/HTTP JSON (ids, parents,
# GenAI attributes typed, status), a collector answering 503 is retried,
# one that stays down makes the exporter drop and count, clearing the
# setting stops it, and a bad endpoint is refused.  A locked span table
# makes spans wait in their queue (never the ledger), then be dropped and
# counted, with a warning to the caller and partial traces in explain.
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
my $node = PostgreSQL::Test::Cluster->new('otlp');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
maester.span_queue_size = 64kB
});
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, max_attempts)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%}', 1);
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('mock-priced', '2020-01-01', 1.25, 3.5);
});

# spans written before the exporter starts are not sent (and every call
# below writes as many spans as this one)
my $first = $node->safe_psql('postgres',
	q{SELECT trace_id FROM maester.llm_generate('before export', 'mock-priced')});
ok($node->poll_query_until('postgres',
	"SELECT count(*) > 0 FROM maester.span WHERE trace_id = '$first' AND name = 'llm_generate'"),
	'the first call wrote its spans');
sleep(1);
my $nspans = $node->safe_psql('postgres', "SELECT count(*) FROM maester.span WHERE trace_id = '$first'");
cmp_ok($nspans, '>=', 4, 'a call writes at least four spans');

# a bad endpoint is refused
my ($ret, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET maester.otlp_endpoint = 'ftp://x'});
like($err, qr/must start with http/, 'a non-http endpoint is refused');
($ret, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET maester.otlp_endpoint = 'http://x/?a=b'});
like($err, qr/must not contain a query/, 'an endpoint with a query is refused');

# the exporter starts on reload
my $offset = -s $node->logfile;
$node->safe_psql('postgres', qq{ALTER SYSTEM SET maester.otlp_endpoint = '$url/'; SELECT pg_reload_conf()});
ok($node->wait_for_log(qr/maester OTLP exporter for database \d+ sends spans after seq/, $offset),
	'the resident worker starts exporting, from the spans written after now');

my $trace = $node->safe_psql('postgres',
	q{SELECT trace_id FROM maester.llm_generate('exported', 'mock-priced')});

ok($mock->wait_for(sub { scalar(@{ $mock->get('/_mock/traces')->{spans} }) >= $nspans }, 20),
	'the collector received the spans');
my $got = $mock->get('/_mock/traces');
my @spans = @{ $got->{spans} };
is_deeply($got->{rejected}, [], 'the collector found nothing malformed');
is(scalar(grep { $_->{traceId} ne $trace } @spans), 0, 'only spans written after the exporter started');
is(scalar(grep { $_->{traceId} !~ /^[0-9a-f]{32}$/ || $_->{spanId} !~ /^[0-9a-f]{16}$/ } @spans), 0,
	'traceId 32 hex, spanId 16 hex');
is(scalar(grep { $_->{startTimeUnixNano} !~ /^[0-9]{19}$/ } @spans), 0,
	'times are unix nanoseconds as strings');
is(scalar(@spans), $nspans, 'every span of the call, once');
my ($root) = grep { $_->{name} eq 'llm_generate' } @spans;
ok($root, 'the root span is there');
is($root->{parentSpanId}, '', 'the root has no parent');
my ($gen) = grep { $_->{name} eq 'model_generate' } @spans;
is($gen->{kind}, 3, 'model_generate is a CLIENT span');
is($root->{kind}, 1, 'llm_generate is an INTERNAL span');
is($gen->{status}{code}, 1, 'status OK');
my %attr = map { $_->{key} => $_->{value} } @{ $gen->{attributes} };
is($attr{'gen_ai.request.model'}{stringValue}, 'mock-priced', 'string attribute');
ok(defined $attr{'gen_ai.usage.input_tokens'}{intValue}, 'integer attribute as intValue');
my %ids = map { $_->{spanId} => 1 } @spans;
is(scalar(grep { $_->{parentSpanId} ne '' && !$ids{ $_->{parentSpanId} } } @spans), 0,
	'every parent is in the trace');
cmp_ok($gen->{endTimeUnixNano}, '>=', $gen->{startTimeUnixNano}, 'end after start');
is($node->safe_psql('postgres', 'SELECT exported, export_dropped FROM maester.trace_status()'),
	"$nspans|0", 'trace_status counts the exported spans');

# a collector answering 503 twice: retried, nothing lost
$mock->get('/_mock/traces_fail/2');
my $posts = $got->{posts};
$node->safe_psql('postgres', q{SELECT maester.llm_generate('retried', 'mock-priced')});
ok($mock->wait_for(sub { scalar(@{ $mock->get('/_mock/traces')->{spans} }) >= 2 * $nspans }, 30),
	'spans arrive after two 503s');
is($mock->get('/_mock/traces')->{posts} - $posts, 3, 'three posts: two refused, one taken');
is($node->safe_psql('postgres', 'SELECT export_dropped, failed_posts FROM maester.trace_status()'),
	'0|2', 'two failed posts, nothing dropped');

# a collector that stays down: the batch is dropped and counted
$mock->get('/_mock/traces_fail/3');
$node->safe_psql('postgres', q{SELECT maester.llm_generate('dropped', 'mock-priced')});
ok($node->poll_query_until('postgres', 'SELECT export_dropped > 0 FROM maester.trace_status()'),
	'a collector that stays down: spans dropped');
is($node->safe_psql('postgres', 'SELECT export_dropped, failed_posts FROM maester.trace_status()'),
	"$nspans|5", 'dropped and failed posts counted');
is(scalar(@{ $mock->get('/_mock/traces')->{spans} }), 2 * $nspans, 'nothing more arrived');
is($node->safe_psql('postgres', q{SELECT count(*) FROM maester.span}), 4 * $nspans,
	'the table keeps every span');

# the exporter picks up again
$node->safe_psql('postgres', q{SELECT maester.llm_generate('after the outage', 'mock-priced')});
ok($mock->wait_for(sub { scalar(@{ $mock->get('/_mock/traces')->{spans} }) >= 3 * $nspans }, 20),
	'export resumes when the collector is back');

# headers for the collector (its API key, say), in the format of
# OTEL_EXPORTER_OTLP_HEADERS; malformed ones are refused
($ret, $out, $err) = $node->psql('postgres', q{ALTER SYSTEM SET maester.otlp_headers = 'novalue'});
like($err, qr/must be name=value/, 'a header without a value is refused');
($ret, $out, $err) = $node->psql('postgres', qq{ALTER SYSTEM SET maester.otlp_headers = 'x-a=b\ncontent-length=0'});
like($err, qr/control characters/, 'a header value with a newline is refused');
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET maester.otlp_headers = 'x-collector-key=k-123 456,x-team=maester';
	SELECT pg_reload_conf()});
my $posts_before = $mock->get('/_mock/traces')->{posts};
sleep(1);    # (the exporter reloads its configuration between batches)
$node->safe_psql('postgres', q{SELECT maester.llm_generate('with headers', 'mock-priced')});
ok($mock->wait_for(sub { $mock->get('/_mock/traces')->{posts} > $posts_before }, 20),
	'a post after the headers were set');
my $h = $mock->get('/_mock/traces')->{headers};
is($h->{'x-collector-key'}, 'k-123 456', 'the configured header is sent');
is($h->{'x-team'}, 'maester', 'and the second one');
is($h->{'content-type'}, 'application/json', 'with the JSON content type');

# clearing the setting stops the exporter
$offset = -s $node->logfile;
$node->safe_psql('postgres', q{ALTER SYSTEM RESET maester.otlp_endpoint; SELECT pg_reload_conf()});
ok($node->wait_for_log(qr/maester OTLP exporter for database \d+ stopped/, $offset),
	'clearing maester.otlp_endpoint stops the export');

# a span table locked by someone else: spans wait in their queue (64 kB
# here) and the ledger does not; what does not fit is dropped and counted,
# the caller is warned once per statement, and calls go on; a trace whose
# spans did not all fit says so in explain; when the lock goes, the queue
# drains
ok($node->poll_query_until('postgres', 'SELECT spans_queued = 0 FROM maester.trace_status()'),
	'no span waits');
my $before = $node->safe_psql('postgres', 'SELECT count(*) FROM maester.span');
my $lock = $node->background_psql('postgres');
$lock->query_safe('BEGIN; LOCK TABLE maester.span IN ACCESS EXCLUSIVE MODE');
my ($dropped_before) = $node->safe_psql('postgres', 'SELECT spans_dropped FROM maester.trace_status()');
($ret, $out, $err) = $node->psql('postgres', q{
	SELECT count(maester.llm_generate('while the span table is locked ' || i, 'mock-priced'))
	  FROM generate_series(1, 100) i});
is($out, '100', 'every call went through');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM maester.usage WHERE prompt_hash IN
	    (SELECT encode(sha256(convert_to('while the span table is locked ' || i, 'UTF8')), 'hex')
	       FROM generate_series(1, 100) i) AND status = 'ok'}),
	100, 'and is in the ledger, while the span table is locked');
my @warnings = $err =~ /WARNING:  the span queue of this database is full/g;
is(scalar(@warnings), 1, 'the caller is warned once per statement');
my $dropped = $node->safe_psql('postgres', 'SELECT spans_dropped FROM maester.trace_status()') - $dropped_before;
cmp_ok($dropped, '>', 0, 'the spans that did not fit are counted as dropped');
$lock->query_safe('COMMIT');
$lock->quit;
ok($node->poll_query_until('postgres', 'SELECT spans_queued = 0 FROM maester.trace_status()'),
	'the queue drains once the lock is gone');
ok($node->poll_query_until('postgres', "SELECT count(*) = $before + 100 * $nspans - $dropped FROM maester.span"),
	'every span that was queued is written');
# every trace of the 100 calls is whole, marked partial (its root says how
# many spans were dropped), or dropped whole; none is cut silently
my $traces = q{(SELECT u.trace_id FROM maester.usage u WHERE u.prompt_hash IN
	    (SELECT encode(sha256(convert_to('while the span table is locked ' || i, 'UTF8')), 'hex')
	       FROM generate_series(1, 100) i))};
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM (SELECT t.trace_id, count(s.span_id) AS n,
	                             bool_or(s.attributes ? 'maester.spans_dropped') AS marked,
	                             max((s.attributes ->> 'maester.spans_dropped')::int) AS said
	                        FROM $traces t LEFT JOIN maester.span s USING (trace_id)
	                       GROUP BY t.trace_id) x
	 WHERE NOT (n = $nspans OR n = 0 OR (marked AND n + said = $nspans))}),
	'0', 'no trace lost spans without saying so');
my $partial = $node->safe_psql('postgres',
	q{SELECT trace_id FROM maester.span WHERE attributes ? 'maester.spans_dropped' LIMIT 1});
SKIP:
{
	skip 'no trace happened to be cut in the middle', 1 if $partial eq '';
	like($node->safe_psql('postgres', "SELECT string_agg(e, ' ') FROM maester.explain('$partial') e"),
		qr/partial: \d+ spans dropped/, 'explain marks a trace that lost spans as partial');
}
ok($node->wait_for_log(qr/spans dropped \(the span queue was full\)/),
	'the worker logs how many were dropped');

# only a superuser sees the endpoint
$node->safe_psql('postgres', q{CREATE ROLE plain LOGIN});
($ret, $out, $err) = $node->psql('postgres', q{SET ROLE plain; SHOW maester.otlp_endpoint});
like($err, qr/must be superuser|permission denied/, 'the endpoint is hidden from other roles');
($ret, $out, $err) = $node->psql('postgres', q{SET ROLE plain; SHOW maester.otlp_headers});
like($err, qr/must be superuser|permission denied/, 'so are the headers');

$node->stop;
done_testing();
