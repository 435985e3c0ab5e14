# A call waiting on a silent upstream is interrupted at once by query
# cancel, statement_timeout and pg_terminate_backend, with the right error,
# leaves no connection open to the upstream, and uses no CPU while waiting.
# The times are printed; the assertions only require "well under a second"
# (against a 60 s upstream timeout), so that a slow machine cannot flake.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use MaesterMock;

my $mock = MaesterMock->start;
my $node = PostgreSQL::Test::Cluster->new('cancel');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
});
$node->start;
my $url = $mock->url;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold, timeout_ms)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%,fault-%}', 0, 60000);
});
# warm up: the library and a connection are ready
$node->safe_psql('postgres', q{SELECT maester.llm_generate('x', 'mock-1')});

my $hang = q{SELECT maester.llm_generate('x', 'fault-hang', options => '{"timeout_ms": 60000}');};

# Start a hanging call in a background session; returns (session, pid)
sub start_hanging_call
{
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $s->query_safe('SELECT pg_backend_pid()');
	my $before = $mock->stats->{requests};
	$s->{stdin} .= "$hang\n";
	$s->{run}->pump_nb;
	ok($mock->wait_for(sub { $mock->stats->{requests} > $before }, 10),
		'the call reached the upstream');
	return ($s, $pid);
}

# Wait until backend $pid is no longer running a query; seconds taken
sub wait_idle
{
	my ($pid, $t0) = @_;
	for (1 .. 1000)
	{
		my $st = $node->safe_psql('postgres',
			"SELECT coalesce((SELECT state FROM pg_stat_activity WHERE pid = $pid), 'gone')");
		return time - $t0 if $st ne 'active';
		usleep(2_000);
	}
	return 999;
}

# CPU ticks (utime + stime) of a process
sub cpu_ticks
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/stat") or return -1;
	my @f = split ' ', <$fh>;
	close $fh;
	return $f[13] + $f[14];
}

# 1. query cancel
my ($s, $pid) = start_hanging_call();
my $c0 = cpu_ticks($pid);
sleep 2;
my $busy = cpu_ticks($pid) - $c0;
diag("CPU used by the backend while waiting 2 s on a silent upstream: $busy ticks (1 tick = 10 ms)");
cmp_ok($busy, '<=', 5, 'waiting on a silent upstream uses no CPU');
my $t0 = time;
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
my $took = wait_idle($pid, $t0);
diag(sprintf("cancel: the call stopped %.1f ms after pg_cancel_backend", $took * 1000));
cmp_ok($took, '<', 1, 'cancel stops the call at once');
$s->query('SELECT 1');
like($s->{stderr}, qr/canceling statement due to user request/, 'cancel gives 57014');
ok($mock->wait_for(sub { $mock->stats->{open_connections} <= 1 }, 5),
	'no connection left open to the upstream after cancel');
$s->quit;

# 2. statement_timeout
$s = $node->background_psql('postgres', on_error_stop => 0);
$pid = $s->query_safe('SELECT pg_backend_pid()');
$s->query_safe("SET statement_timeout = '300ms'");
$t0 = time;
$s->query("SELECT maester.llm_generate('x', 'fault-hang', options => '{\"timeout_ms\": 60000}')");
$took = time - $t0;
diag(sprintf("statement_timeout 300 ms: the call ended after %.1f ms", $took * 1000));
cmp_ok($took, '<', 1.3, 'statement_timeout stops the call at once');
like($s->{stderr}, qr/canceling statement due to statement timeout/, 'statement_timeout gives 57014');
ok($mock->wait_for(sub { $mock->stats->{open_connections} <= 1 }, 5),
	'no connection left open after statement_timeout');
$s->quit;

# 3. pg_terminate_backend
($s, $pid) = start_hanging_call();
$t0 = time;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
$took = wait_idle($pid, $t0);
diag(sprintf("terminate: the backend was gone %.1f ms after pg_terminate_backend", $took * 1000));
cmp_ok($took, '<', 1, 'terminate stops the call at once');
ok($mock->wait_for(sub { $mock->stats->{open_connections} <= 1 }, 5),
	'no connection left open after terminate');
eval { $s->quit; };
like(slurp_file($node->logfile), qr/terminating connection due to administrator command/,
	'terminate gives 57P01');

# 4. an embedding batch with several requests in flight (issue #16)
$s = $node->background_psql('postgres', on_error_stop => 0);
$pid = $s->query_safe('SELECT pg_backend_pid()');
my $before = $mock->stats->{requests};
$s->{stdin} .= q{SELECT count(*) FROM maester.embed(ARRAY(SELECT 'text ' || i FROM generate_series(1, 10000) i),
    'fault-hang', '{"dimensions": 4, "concurrency": 3, "timeout_ms": 60000}');} . "\n";
$s->{run}->pump_nb;
ok($mock->wait_for(sub { $mock->stats->{requests} >= $before + 3 }, 10),
	'three embedding requests reached the upstream');
$t0 = time;
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
$took = wait_idle($pid, $t0);
diag(sprintf("cancel: the embedding batch stopped %.1f ms after pg_cancel_backend", $took * 1000));
cmp_ok($took, '<', 1, 'cancel stops an embedding batch at once');
$s->query('SELECT 1');
like($s->{stderr}, qr/canceling statement due to user request/, 'cancel gives 57014');
ok($mock->wait_for(sub { $mock->stats->{open_connections} <= 1 }, 5),
	'no connection left open after the batch was cancelled');
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM maester.usage WHERE purpose = 'embedding' AND status = 'pending'}),
	'the cancelled attempts are settled in the ledger');
is($node->safe_psql('postgres', q{SELECT count(*) FROM maester.usage WHERE purpose = 'embedding'}),
	'3', 'one ledger row per request sent, none for those never sent');
$s->quit;

# the server is fine afterwards
is($node->safe_psql('postgres', q{SELECT provider FROM maester.llm_generate('x', 'mock-1')}),
	'mock', 'calls work after the interruptions');

$node->stop;
$mock->stop;
done_testing();
