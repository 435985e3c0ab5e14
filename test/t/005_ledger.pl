# The ledger loses nothing: rows survive the caller's ROLLBACK and errors,
# a SIGKILLed caller leaves an orphaned row charged at its estimate, an
# immediate shutdown right after a call keeps the settled row, a killed
# worker makes calls fail closed until it is back (and nothing is counted
# twice), it works in every database with the extension, and 16 sessions x
# 1,000 calls give exactly 16,000 settled rows whose costs add up to what
# the calls returned.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use MaesterMock;

my $mock = MaesterMock->start;
my $url = $mock->url;
my $node = PostgreSQL::Test::Cluster->new('ledger');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
wal_level = replica
maester.allow_insecure_hosts = '127.0.0.1'
max_connections = 40
restart_after_crash = on
});
$node->start;

my $setup = qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold, max_attempts)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%,fault-%}', 0, 1);
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('mock-priced', '2020-01-01', 1.25, 3.5), ('fault-hang', '2020-01-01', 2, 8);
};
$node->safe_psql('postgres', $setup);

sub usage_count
{
	my ($where, $db) = @_;
	return $node->safe_psql($db // 'postgres', "SELECT count(*) FROM maester.usage WHERE $where");
}

# 1. ROLLBACK, and an error later in the same transaction
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT maester.llm_generate('rolled back', 'mock-priced');
	ROLLBACK;});
is(usage_count(q{status = 'ok' AND trace_id IS NOT NULL}), 1, 'ROLLBACK keeps the ledger row');
my ($ret) = $node->psql('postgres', q{
	BEGIN;
	SELECT maester.llm_generate('then an error', 'mock-priced');
	SELECT 1/0;
	COMMIT;});
isnt($ret, 0, 'the transaction failed');
is(usage_count(q{status = 'ok'}), 2, 'an error later in the transaction keeps the row');

# 2. SIGKILL of a caller during slow upstream calls (two in flight: the
# crash restart ends both, and both rows must be recovered)
my @sessions;
my $before = $mock->stats->{requests};
for my $i (1 .. 2)
{
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	my $p = $s->query_safe('SELECT pg_backend_pid()');
	$s->{stdin} .= "SELECT maester.llm_generate('slow $i', 'fault-hang', max_tokens => 100, options => '{\"timeout_ms\": 60000}');\n";
	$s->{run}->pump_nb;
	push @sessions, [ $s, $p ];
}
ok($mock->wait_for(sub { $mock->stats->{requests} >= $before + 2 }, 10), 'the slow calls are in flight');
is(usage_count(q{status = 'pending'}), 2, 'their rows are pending while in flight');
kill 'KILL', $sessions[0][1];
eval { $_->[0]->quit } for @sessions;
# the postmaster restarts everything; wait until it serves again
$node->poll_query_until('postgres', 'SELECT true') or die "no recovery";
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 2 FROM maester.usage WHERE status = 'orphaned'}),
	'after recovery both rows are orphaned');
is($node->safe_psql('postgres',
	q{SELECT bool_and(cost_usd = estimated_cost_usd AND cost_usd > 0) FROM maester.usage WHERE status = 'orphaned'}),
	't', 'the orphaned rows are charged at their estimate');

# 3. pg_ctl stop -m immediate right after a call returned
my $rid = $node->safe_psql('postgres',
	q{SELECT request_id FROM maester.llm_generate('just before the crash', 'mock-priced')});
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres',
	"SELECT status || ' ' || (cost_usd > 0)::text FROM maester.usage WHERE request_id = '$rid'"),
	'ok true', 'the settled row is there after an immediate shutdown');

# 4. the worker killed: calls fail closed until it is back
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'maester worker' AND datname = 'postgres'})
  or die "no ledger worker";
my $rows_before = usage_count('true');
$before = $mock->stats->{requests};
my $launcher = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'maester launcher'});
my $worker = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'maester worker' AND datname = 'postgres'});
# stop the launcher first (it comes back after bgw_restart_time), then the worker
$node->safe_psql('postgres', "SELECT pg_terminate_backend($launcher)");
$node->safe_psql('postgres', "SELECT pg_terminate_backend($worker)");
$node->poll_query_until('postgres',
	"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $worker)") or die;
my ($r2, $out2, $err2) = $node->psql('postgres',
	q{SET maester.ledger_timeout_ms = 50; SELECT maester.llm_generate('no ledger', 'mock-priced')});
like($err2, qr/usage ledger/, 'without its worker a call fails closed');
is($mock->stats->{requests}, $before, 'nothing reached the upstream');
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'maester worker' AND datname = 'postgres'}),
	'the worker comes back by itself');
$rid = $node->safe_psql('postgres', q{SELECT request_id FROM maester.llm_generate('ledger back', 'mock-priced')});
is($node->safe_psql('postgres', "SELECT status FROM maester.usage WHERE request_id = '$rid'"),
	'ok', 'calls work again');
is(usage_count('true'), $rows_before + 1, 'nothing was counted twice');

# 5. another database with the extension, no extra setting
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', $setup);
$node->safe_psql('other', q{SELECT maester.llm_generate('elsewhere', 'mock-priced')});
is(usage_count(q{status = 'ok'}, 'other'), 1, 'the ledger works in a second database');

# 6. 16 sessions x 1,000 calls
$node->safe_psql('postgres', q{
	CREATE TABLE returned (cost numeric);
	GRANT ALL ON returned TO PUBLIC;});
my $script = $node->basedir . '/calls.sql';
open(my $fh, '>', $script) or die;
print $fh "INSERT INTO returned SELECT cost_usd FROM maester.llm_generate('hello from pgbench', 'mock-priced');\n";
close $fh;
my $ok_before = usage_count(q{status = 'ok' AND model = 'mock-priced'});
$node->command_ok(
	[ 'pgbench', '-n', '-c', '16', '-j', '2', '-t', '1000', '-f', $script,
	  '-d', $node->connstr('postgres') ],
	'16 sessions x 1,000 calls');
is(usage_count(q{status = 'ok' AND model = 'mock-priced'}) - $ok_before, 16000,
	'exactly 16,000 settled rows');
is(usage_count(q{status = 'pending'}), 0, 'none left pending');
is($node->safe_psql('postgres', q{SELECT count(*) FROM returned}), 16000, '16,000 costs returned');
is($node->safe_psql('postgres', q{
	SELECT (SELECT sum(cost) FROM returned) =
	       (SELECT sum(cost_usd) FROM maester.usage WHERE prompt_hash = encode(sha256('hello from pgbench'), 'hex'))}),
	't', 'the ledger costs add up to what the calls returned');

$node->stop;
$mock->stop;
done_testing();
