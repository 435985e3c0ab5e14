# Ledger records made durable by their backends in WAL (src/walledger.c):
# the resident worker commits rows without waiting for a flush, and after
# a crash writes again what its replication slot's WAL holds.
#
# 1. Each database's worker holds a physical replication slot,
#    maester_ledger_<oid>, whose restart_lsn follows the ledger: it passes
#    the WAL of calls once their rows are durable (it pins no old WAL).
# 2. An immediate shutdown right after 20 calls returned, with the WAL
#    writer asleep for 10 s, so that the worker's last asynchronous
#    commits are lost: every call is 'ok' after the restart, because the
#    worker replayed the records from WAL (the log says how many).
#    Messages another role writes with the ledger's prefix
#    (pg_logical_emit_message, which anyone may call) are not signed with
#    the server's key: they are ignored, with a WARNING.
# 3. An immediate shutdown while a call is in flight at the provider: its
#    PENDING row is there after the restart, orphaned and charged at its
#    estimate (the request may have been billed).
# 4. maester.ledger_wal = off (a reload): the worker drops its slot (so
#    that wal_level may be lowered), its synchronous commits make records
#    durable again, and a crash right after a call keeps it; on again, a
#    new slot.
# 5. Without a free replication slot (max_replication_slots = 0): a
#    WARNING says so, calls work, and a crash right after a call keeps it.
# 6. DROP EXTENSION and DROP DATABASE drop the database's slot (it would
#    keep WAL forever), and so does the launcher for a slot left over from
#    a database that is gone; CREATE EXTENSION makes a new one.
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
my $node = PostgreSQL::Test::Cluster->new('ledger_wal');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
wal_level = replica
wal_writer_delay = 10s
checkpoint_timeout = 1h
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
sub sq { return $node->safe_psql($_[1] // 'postgres', $_[0]); }

my $slot = q{(SELECT 'maester_ledger_' || oid FROM pg_database WHERE datname = current_database())};
sub wait_worker
{
	my ($db) = @_;
	$node->poll_query_until($db // 'postgres',
		q{SELECT ready FROM maester.worker_status()}) or die "no worker";
}
wait_worker();

# 1. the slot, held by the worker, and following the ledger
is(sq(qq{SELECT slot_type || ' ' || active::text || ' ' || (active_pid = (SELECT worker_pid FROM maester.worker_status()))::text
	FROM pg_replication_slots WHERE slot_name = $slot}),
	'physical true true', 'the worker holds its physical replication slot');
sq(q{SELECT maester.llm_generate('hello', 'mock-priced') FROM generate_series(1, 5)});
my $after = sq('SELECT pg_current_wal_lsn()');
ok($node->poll_query_until('postgres',
	qq{SELECT restart_lsn >= '$after' FROM pg_replication_slots WHERE slot_name = $slot}),
	'the slot passes the WAL of calls whose rows are durable');

# 2. an immediate shutdown right after calls returned (the calls' flushes
# make the forger's messages, written before them, durable too)
# anyone may write a logical message with the ledger's prefix: a forger
sq(q{CREATE ROLE mallory LOGIN});
$node->safe_psql('postgres', q{
	SELECT pg_logical_emit_message(false, 'maester.ledger', decode(repeat('ab', 600), 'hex'));
	SELECT pg_logical_emit_message(false, 'maester.ledger', decode(repeat('00', 32), 'hex'));
	SELECT pg_logical_emit_message(false, 'maester.ledger', ''::bytea);}, extra_params => [ '-U', 'mallory' ]);
sq(q{CREATE TABLE returned (request_id uuid)});
sq(q{INSERT INTO returned SELECT (maester.llm_generate('crash ' || i, 'mock-priced')).request_id
	FROM generate_series(1, 20) i});
my $rows = sq(q{SELECT count(*) FROM maester.usage});
my $offset = -s $node->logfile;
$node->stop('immediate');
$node->start;
ok($node->wait_for_log(qr/maester worker replayed ([1-9]\d*) ledger records from WAL/, $offset),
	'the worker replayed the records from WAL');
ok($node->wait_for_log(qr/maester worker ignored 3 ledger messages in WAL not signed with this server's key/, $offset),
	'messages a role wrote with the ledger\'s prefix are ignored, with a WARNING');
wait_worker();
is(sq(q{SELECT count(*) FILTER (WHERE u.status = 'ok' AND u.cost_usd > 0) || ' of ' || count(*)
	FROM returned r LEFT JOIN maester.usage u USING (request_id)}),
	'20 of 20', 'every call that returned is settled after the crash');
is(sq(q{SELECT count(*) FROM maester.usage WHERE status IN ('pending', 'orphaned')}), '0',
	'nothing was left pending or orphaned');
is(sq(q{SELECT count(*) FROM maester.usage}), $rows, 'no row came from the forged messages');
is(sq(q{SELECT count(*) FROM (SELECT request_id, attempt FROM maester.usage GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0', 'the replay counted nothing twice');

# 3. an immediate shutdown while a call is at the provider
my $before = $mock->stats->{requests};
my $s = $node->background_psql('postgres', on_error_stop => 0);
$s->{stdin} .= "SELECT maester.llm_generate('in flight', 'fault-hang', max_tokens => 100, options => '{\"timeout_ms\": 60000}');\n";
$s->{run}->pump_nb;
ok($mock->wait_for(sub { $mock->stats->{requests} >= $before + 1 }, 10), 'the call is at the provider');
$node->stop('immediate');
eval { $s->quit };
$node->start;
wait_worker();
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM maester.usage WHERE status = 'orphaned' AND cost_usd = estimated_cost_usd AND cost_usd > 0}),
	'the call in flight is in the ledger, orphaned at its estimate');

# 4. maester.ledger_wal = off: the slot is dropped, the worker's commits
# are durable again
sq(q{ALTER SYSTEM SET maester.ledger_wal = off});
sq(q{SELECT pg_reload_conf()});
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name = $slot"),
	'with maester.ledger_wal off, the worker drops its slot');
my $rid = sq(q{SELECT request_id FROM maester.llm_generate('off', 'mock-priced')});
$node->stop('immediate');
$node->start;
wait_worker();
is(sq("SELECT status FROM maester.usage WHERE request_id = '$rid'"), 'ok',
	'the call is settled after the crash: the worker committed it synchronously');
sq(q{ALTER SYSTEM RESET maester.ledger_wal});
sq(q{SELECT pg_reload_conf()});
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name = $slot AND active"),
	'turned on again, the worker makes a new slot');

# 6. DROP DATABASE and DROP EXTENSION drop the slot; CREATE EXTENSION makes one
sq(q{CREATE DATABASE other});
sq($setup, 'other');
wait_worker('other');
my $other_slot = sq(q{SELECT 'maester_ledger_' || oid FROM pg_database WHERE datname = 'other'});
is(sq("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$other_slot'"), '1',
	'the other database has its slot');
sq(q{DROP DATABASE other});
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name = '$other_slot'"),
	'DROP DATABASE drops its slot');
# a slot of a database that is gone, left over (its drop failed, or the
# database was dropped while no worker ran): the launcher drops it too
sq(q{SELECT pg_create_physical_replication_slot('maester_ledger_4000000000', true)});
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name = 'maester_ledger_4000000000'"),
	'a left-over slot of a database that is gone is dropped');
my $pg_slot = sq("SELECT $slot");
sq(q{DROP EXTENSION maester});
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name = '$pg_slot'"),
	'DROP EXTENSION drops the slot');
sq($setup);
wait_worker();
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name = '$pg_slot' AND active"),
	'CREATE EXTENSION makes a new slot');
$node->stop;

# 5. no replication slot to be had
my $bare = PostgreSQL::Test::Cluster->new('no_slots');
$bare->init;
$bare->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
wal_level = replica
max_replication_slots = 0
});
$bare->start;
$bare->safe_psql('postgres', $setup);
$bare->poll_query_until('postgres', q{SELECT ready FROM maester.worker_status()}) or die "no worker";
ok($bare->wait_for_log(qr/WARNING: .*makes the ledger durable by its own commits/),
	'a WARNING says the worker makes the ledger durable by its own commits');
$rid = $bare->safe_psql('postgres', q{SELECT request_id FROM maester.llm_generate('no slot', 'mock-priced')});
$bare->stop('immediate');
$bare->start;
$bare->poll_query_until('postgres', q{SELECT ready FROM maester.worker_status()}) or die "no worker";
is($bare->safe_psql('postgres', "SELECT status FROM maester.usage WHERE request_id = '$rid'"), 'ok',
	'without a slot, a call that returned is settled after a crash');
$bare->stop;

done_testing();
