# The worker model: one resident worker per database that uses maester.
#
# 1. Slots: with maester.max_databases = 2, dropping the *first* database
#    (without FORCE) leaves the second calling and tracing, a third takes
#    the freed slot; a killed worker's successor writes the spans queued.
# 2. Scale: with the default max_worker_processes = 8, five databases use
#    maester at once and parallel query still gets its workers; no worker
#    runs in a database without maester; DROP DATABASE, ALTER DATABASE
#    ... RENAME and CREATE DATABASE ... TEMPLATE work without FORCE.
# 3. A bad ledger record never stops the ledger: a PENDING row a CHECK
#    refuses fails its call (nothing sent) and goes to maester.dead_letter,
#    the other calls are recorded; a SETTLE row refused goes there too and
#    the row is recovered (orphaned) by the periodic check, no restart.
# 4. Spans are not dropped under the README's load: a 1,000-request
#    generate_batch at concurrency 64 keeps every span with the defaults.
# 5. A worker that cannot be started: the caller is told at once why.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use MaesterMock;

my $mock = MaesterMock->start;
my $url = $mock->url;

my $setup = qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, max_attempts)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%}', 1);
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('mock-a', '2020-01-01', 1, 2);
};
my $call = q{SELECT content IS NOT NULL FROM maester.llm_generate('hello', 'mock-a')};

sub worker_count
{
	my ($node, $db) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT count(*) FROM pg_stat_activity WHERE datname = '$db' AND backend_type LIKE 'maester%'});
}

# a call in $db, and its spans are written
sub call_traced
{
	my ($node, $db, $prompt) = @_;
	my $trace = $node->safe_psql($db, qq{SELECT trace_id FROM maester.llm_generate('$prompt', 'mock-a')});
	return $node->poll_query_until($db, qq{SELECT count(*) >= 4 FROM maester.span WHERE trace_id = '$trace'});
}

# ---------------------------------------------------------------------
# 1. slots
my $node = PostgreSQL::Test::Cluster->new('slots');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
wal_level = replica
maester.allow_insecure_hosts = '127.0.0.1'
maester.max_databases = 2
});
$node->start;

for my $db (qw(one two))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, $setup);
	ok(call_traced($node, $db, "hello $db"), "a traced call in database $db");
}
my $oid_one = $node->safe_psql('postgres', q{SELECT oid FROM pg_database WHERE datname = 'one'});
$node->safe_psql('postgres', 'DROP DATABASE one');
pass('DROP DATABASE of a database with a maester worker, without FORCE');
ok($node->wait_for_log(qr/freed the slot of database $oid_one/), 'its slot is freed');
for my $i (1 .. 3)
{
	ok(call_traced($node, 'two', "two again $i"), "the second database keeps calling and tracing ($i)");
}

$node->safe_psql('postgres', 'CREATE DATABASE three');
$node->safe_psql('three', $setup);
ok(call_traced($node, 'three', 'hello three'), 'a third database takes the freed slot');
$node->safe_psql('postgres', 'CREATE DATABASE four');
$node->safe_psql('four', $setup);
my ($ret, $out, $err) = $node->psql('four', $call);
like($err, qr/no free ledger slot for this database/, 'a database beyond maester.max_databases is told so');

# the worker of two is killed: its successor writes what was queued
$node->safe_psql('postgres',
	q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'two' AND backend_type = 'maester worker'});
ok(call_traced($node, 'two', 'after the kill'), 'after its worker was stopped, calls are traced again');
is($node->safe_psql('two', q{SELECT spans_queued FROM maester.trace_status()}), '0', 'no span stays queued');
$node->stop;

# ---------------------------------------------------------------------
# 2. five databases, the default max_worker_processes, and utility commands
$node = PostgreSQL::Test::Cluster->new('five');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
wal_level = replica
maester.allow_insecure_hosts = '127.0.0.1'
});
$node->start;
is($node->safe_psql('postgres', 'SHOW max_worker_processes'), '8', 'the default max_worker_processes');
for my $i (1 .. 5)
{
	$node->safe_psql('postgres', "CREATE DATABASE d$i");
	$node->safe_psql("d$i", $setup);
}
for my $i (1 .. 5)
{
	is($node->safe_psql("d$i", $call), 't', "database d$i calls");
}
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'maester worker'}),
	'5', 'five resident workers, one per database');
like($node->safe_psql('d1', q{
	SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
	SET min_parallel_table_scan_size = 0;
	CREATE TABLE big AS SELECT g FROM generate_series(1, 200000) g; ANALYZE big;
	EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT count(*) FROM big}),
	qr/Workers Launched: [12]/, 'parallel query still gets workers');

$node->safe_psql('postgres', 'CREATE DATABASE plain');
$node->safe_psql('plain', 'SELECT 1');
sleep(2);
is(worker_count($node, 'plain'), '0', 'no maester worker in a database without maester');
my $oid_plain = $node->safe_psql('postgres', q{SELECT oid FROM pg_database WHERE datname = 'plain'});
ok(!$node->log_contains("database $oid_plain"), 'the launcher never looked at it');

$node->safe_psql('postgres', 'DROP DATABASE d1');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_database WHERE datname = 'd1'}), '0',
	'DROP DATABASE without FORCE');
$node->safe_psql('postgres', 'ALTER DATABASE d2 RENAME TO d2_renamed');
is($node->safe_psql('d2_renamed', $call), 't', 'ALTER DATABASE ... RENAME without FORCE; the renamed database calls');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE datname = 'd2_renamed' AND backend_type = 'maester worker'}),
	'and has its worker again');
$node->safe_psql('postgres', 'CREATE DATABASE d3_copy TEMPLATE d3');
is($node->safe_psql('d3_copy', q{SELECT count(*) FROM maester.usage}), '1', 'CREATE DATABASE ... TEMPLATE copies the ledger');
is($node->safe_psql('d3', $call), 't', 'the template calls again');
is($node->safe_psql('d3_copy', $call), 't', 'and so does the copy');
ok(!$node->log_contains('terminated by signal'), 'no process crashed');

# ---------------------------------------------------------------------
# 3. a record the ledger refuses
my $d = 'd4';
my $wpid = $node->safe_psql($d, q{SELECT worker_pid FROM maester.worker_status()});
$node->safe_psql($d, q{
	ALTER TABLE maester.usage ADD CONSTRAINT no_poison CHECK (tags ->> 't' IS DISTINCT FROM 'poison');
	ALTER TABLE maester.usage ADD CONSTRAINT no_late_poison
	  CHECK (tags ->> 't' IS DISTINCT FROM 'late' OR status IN ('pending', 'orphaned'))});
$mock->get('/_mock/reset');
my $res = $node->safe_psql($d, q{
	SELECT string_agg(coalesce(error_class, 'ok') || ':' || coalesce(error_code, ''), ',' ORDER BY ordinal)
	  FROM maester.generate_batch(ARRAY(
	         SELECT jsonb_build_object('prompt', 'p' || i, 'options',
	                  jsonb_build_object('tags', jsonb_build_object('t', CASE i WHEN 3 THEN 'poison' WHEN 5 THEN 'late' ELSE 'fine' END)))
	           FROM generate_series(1, 8) i), model => 'mock-a')});
is($res, 'ok:,ok:,ledger:MG006,ok:,ok:,ok:,ok:,ok:', 'the call whose ledger row is refused fails; the others go on');
is($mock->stats->{requests}, 7, 'the refused call was not sent');
is($node->safe_psql($d, q{SELECT kind || ' ' || sqlstate || ' ' || (record ->> 'request_id' IS NOT NULL)
	FROM maester.dead_letter ORDER BY id}), "pending 23514 true\nsettle 23514 true",
	'both refused records are in maester.dead_letter');
is($node->safe_psql($d, q{SELECT count(*) FROM maester.usage WHERE tags ->> 't' = 'fine' AND status = 'ok'}), '6',
	'the other calls are recorded');
is($node->safe_psql($d, q{SELECT worker_pid || ' ' || dead_letters FROM maester.worker_status()}), "$wpid 2",
	'the same worker goes on, and counts them');
ok($node->log_contains('could not write a ledger record of request'), 'each is logged');
# the answered call whose settlement was refused: recovered, not lost
ok($node->poll_query_until($d, q{SELECT status = 'orphaned' FROM maester.usage WHERE tags ->> 't' = 'late'}),
	'the row whose settlement was refused is recovered by the periodic check');
is($node->safe_psql($d, $call), 't', 'calls go on');

# ---------------------------------------------------------------------
# 4. spans under the README's load, with the default queue
$d = 'd5';
my $before = $node->safe_psql($d, q{SELECT spans_dropped FROM maester.trace_status()});
my $t0 = time;
is($node->safe_psql($d, q{
	SELECT count(*) FILTER (WHERE error_class IS NULL) FROM maester.generate_batch(
	  ARRAY(SELECT jsonb_build_object('prompt', 'load ' || i) FROM generate_series(1, 1000) i),
	  model => 'mock-a', concurrency => 64)}), '1000', 'a 1,000-request batch at concurrency 64');
diag(sprintf('1,000 calls in %.1f s', time - $t0));
is($node->safe_psql($d, q{SELECT spans_dropped FROM maester.trace_status()}), $before, 'no span was dropped');
my $per = $node->safe_psql($d, q{SELECT count(*) FROM maester.span s JOIN maester.usage u USING (trace_id)
	WHERE u.prompt_hash = encode(sha256(convert_to('load 1', 'UTF8')), 'hex')});
ok($node->poll_query_until($d, qq{SELECT count(*) = 1000 * $per FROM maester.span s
	WHERE s.trace_id IN (SELECT trace_id FROM maester.usage WHERE prompt_hash IN
	  (SELECT encode(sha256(convert_to('load ' || i, 'UTF8')), 'hex') FROM generate_series(1, 1000) i))}),
	"every call keeps its $per spans");
$node->stop;

# ---------------------------------------------------------------------
# 5. no background worker slot left for a database's worker
$node = PostgreSQL::Test::Cluster->new('noslot');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
wal_level = replica
maester.allow_insecure_hosts = '127.0.0.1'
max_worker_processes = 3
maester.ledger_timeout_ms = 30000
});
$node->start;
$node->safe_psql('postgres', $setup);
is($node->safe_psql('postgres', $call), 't', 'the first database has its worker');
$node->safe_psql('postgres', 'CREATE DATABASE second');
$node->safe_psql('second', $setup);
$t0 = time;
($ret, $out, $err) = $node->psql('second', $call, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
my $took = time - $t0;
like($err, qr/ERROR:\s+53400/, 'no worker could start: 53400');
like($err, qr/HINT:\s+Raise max_worker_processes/, 'the hint says what to raise');
diag(sprintf('the caller was told after %.1f s (ledger timeout 30 s)', $took));
cmp_ok($took, '<', 15, 'at once, not after the ledger timeout');
$node->stop;

$mock->stop;
done_testing();
