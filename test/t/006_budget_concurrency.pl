# 16 sessions hammering one budget: total spend never exceeds the limit.
# Each call reserves its worst case before it is sent, under one lock, so
# whatever the interleaving, spent + reserved stays within the limit.
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
my $node = PostgreSQL::Test::Cluster->new('budget');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
max_connections = 40
});
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold, max_attempts)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%}', 0, 1);
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('mock-b', '2020-01-01', 50, 150);
	INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('hammer', 'day', 0.25, 'block');
	CREATE TABLE outcomes (ok boolean, cost numeric);
	GRANT ALL ON outcomes TO PUBLIC;
	CREATE FUNCTION try_call() RETURNS void LANGUAGE plpgsql AS \$\$
	BEGIN
	  PERFORM set_config('maester.tenant', 'hammer', true);
	  INSERT INTO outcomes SELECT true, cost_usd
	    FROM maester.llm_generate('spend some money please', 'mock-b', max_tokens => 100);
	EXCEPTION WHEN SQLSTATE 'MB001' THEN
	  INSERT INTO outcomes VALUES (false, 0);
	END \$\$;
});

my $script = $node->basedir . '/hammer.sql';
open(my $fh, '>', $script) or die;
print $fh "SELECT try_call();\n";
close $fh;
$node->command_ok(
	[ 'pgbench', '-n', '-c', '16', '-j', '2', '-t', '100', '-f', $script,
	  '-d', $node->connstr('postgres') ],
	'16 sessions x 100 calls against one budget');

my ($allowed, $blocked) = split /\|/, $node->safe_psql('postgres',
	q{SELECT count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok) FROM outcomes});
diag("calls allowed: $allowed, blocked: $blocked");
cmp_ok($allowed, '>', 0, 'some calls went through');
cmp_ok($blocked, '>', 0, 'the budget blocked the rest');
is($node->safe_psql('postgres', q{SELECT sum(cost_usd) <= 0.25 FROM maester.usage WHERE tenant = 'hammer'}),
	't', 'total spend in the ledger never exceeds the limit');
diag('spent: ' . $node->safe_psql('postgres', q{SELECT sum(cost_usd) FROM maester.usage WHERE tenant = 'hammer'}));
is($node->safe_psql('postgres', q{SELECT count(*) FROM maester.usage WHERE tenant = 'hammer' AND status = 'blocked'}),
	$blocked, 'every blocked call left a blocked row');
is($node->safe_psql('postgres', q{SELECT count(*) FROM maester.usage WHERE tenant = 'hammer' AND status = 'ok'}),
	$allowed, 'every allowed call left a settled row');
is($node->safe_psql('postgres', q{SELECT reserved_usd = 0 AND spent_usd <= limit_usd FROM maester.budget_status WHERE tenant = 'hammer'}),
	't', 'nothing stays reserved; the counters are within the limit');
is($node->safe_psql('postgres', q{
	SELECT b.spent_usd = (SELECT sum(cost_usd) FROM maester.usage WHERE tenant = 'hammer')
	  FROM maester.budget_status b WHERE tenant = 'hammer'}),
	't', 'the shared counter matches the ledger');

# a downgrade budget: once the budget on mock-b is spent, calls go to
# mock-s; the live counters and the ones reloaded from the ledger after a
# restart must agree, for the model's budget and for the tenant's
$node->safe_psql('postgres', q{
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('mock-s', '2020-01-01', 5, 15);
	INSERT INTO maester.budget (tenant, model, period, limit_usd, action, downgrade_model)
	VALUES ('thrifty', 'mock-b', 'day', 0.01, 'downgrade', 'mock-s');
	INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('thrifty', 'day', 100, 'warn');
});
my $served = $node->safe_psql('postgres', q{SET maester.tenant = 'thrifty';
	SELECT string_agg(m, ',' ORDER BY i) FROM (
	    SELECT i, (maester.llm_generate('spend some money please', 'mock-b', max_tokens => 20)).model AS m
	      FROM generate_series(1, 6) i) s});
like($served, qr/^mock-b,.*mock-s$/, "the downgrade budget sends later calls to the cheaper model ($served)");
my $q_thrifty = q{SELECT string_agg(coalesce(model, '*') || ' ' || spent_usd, ', ' ORDER BY model NULLS LAST)
	FROM maester.budget_status WHERE tenant = 'thrifty'};
my $live = $node->safe_psql('postgres', $q_thrifty);

# the counters come back from the ledger after a restart
$node->restart;
is($node->safe_psql('postgres', $q_thrifty), $live,
	"a downgrade budget's spend is the same live and reloaded after a restart ($live)");
$node->safe_psql('postgres', q{SELECT set_config('maester.tenant', 'hammer', false)});
my ($ret, $out, $err) = $node->psql('postgres', q{SET maester.tenant = 'hammer';
	SELECT maester.llm_generate('more', 'mock-b', max_tokens => 2000)});
like($err, qr/budget 1 of tenant "hammer" would be exceeded by [0-9.]+ USD/, 'after a restart the budget is still spent');

# maester.ask's envelope: the embedding and the answer reserved as one
# amount before either is sent.  While session A holds it, B's call that
# would fit the budget without it is refused; A's own call draws on it; the
# rest goes back at the end of A's statement -- also inside an open
# transaction, so a session cannot keep it while it idles -- at a
# subtransaction's abort, and at exit.
$node->safe_psql('postgres', q{
	INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('asker', 'total', 0.05, 'block');
	SELECT maester.prompt_register('ask_like', '{question} {sources}');
	CREATE TABLE envelope_seen (what text, reserved numeric);
	GRANT ALL ON envelope_seen TO PUBLIC;
});
my $reserved = q{SELECT reserved_usd FROM maester.budget_status WHERE tenant = 'asker'};
my $holds = q{SELECT reserved_usd = 0.0364 FROM maester.budget_status WHERE tenant = 'asker'};
my $open = q{maester.ask_budget_open('mock-b', repeat('q', 100), 'ask_like', NULL,
	jsonb_build_object('question', 'x', 'sources', repeat('y', 300)), 'mock-b', 100, '{}')};
my $spend = q{SELECT cost_usd FROM maester.llm_generate('spend some money please', 'mock-b', max_tokens => 100)};
my $ea = $node->background_psql('postgres', on_error_stop => 0);
$ea->query_safe(q{SET maester.tenant = 'asker'});
# A opens the envelope, waits for B to try, makes its own call, notes what is reserved
$ea->{stdin} .= qq{DO \$\$ BEGIN
	PERFORM $open;
	WHILE NOT EXISTS (SELECT FROM envelope_seen WHERE what = 'b tried') LOOP PERFORM pg_sleep(0.02); END LOOP;
	PERFORM maester.llm_generate('spend some money please', 'mock-b', max_tokens => 100);
	INSERT INTO envelope_seen SELECT 'a spent', reserved_usd FROM maester.budget_status WHERE tenant = 'asker';
END \$\$;
};
$ea->{run}->pump_nb;
# embedding (8 + 100 + 2 tokens) and answer (16 + 302 tokens in, 100 out) at 50 / 150 USD per million
ok($node->poll_query_until('postgres', $holds), 'the envelope holds both calls\' worst case');
($ret, $out, $err) = $node->psql('postgres', "SET maester.tenant = 'asker'; $spend");
like($err, qr/budget \d+ of tenant "asker" would be exceeded/,
	'a concurrent call that fits the budget but not beside the envelope is refused');
$node->safe_psql('postgres', q{INSERT INTO envelope_seen VALUES ('b tried', NULL)});
ok($node->poll_query_until('postgres', q{SELECT EXISTS (SELECT FROM envelope_seen WHERE what = 'a spent')}),
	'the envelope\'s own call goes through');
is($node->safe_psql('postgres', q{SELECT reserved FROM envelope_seen WHERE what = 'a spent'}), '0.01945',
	'it drew its reservation from the envelope (0.0364 - 0.01695 left)');
$ea->query_safe('SELECT 1');
is($node->safe_psql('postgres', $reserved), '0', 'the end of the statement gives back the rest');
like($node->safe_psql('postgres', "SET maester.tenant = 'asker'; $spend"), qr/^0\.\d+$/,
	'then the other session\'s call fits');
$ea->query_safe('BEGIN');
$ea->query_safe("SELECT $open");
is($node->safe_psql('postgres', $reserved), '0', 'an envelope ends with its statement, in an open transaction too');
$ea->query_safe('ROLLBACK');
$ea->query_safe(qq{DO \$\$ DECLARE r numeric; BEGIN
	BEGIN PERFORM $open; RAISE EXCEPTION 'the ask fails'; EXCEPTION WHEN OTHERS THEN NULL; END;
	SELECT reserved_usd INTO r FROM maester.budget_status WHERE tenant = 'asker';
	IF r <> 0 THEN RAISE EXCEPTION 'still reserved after the subtransaction: %', r; END IF;
	PERFORM $open; PERFORM $open;
	SELECT reserved_usd INTO r FROM maester.budget_status WHERE tenant = 'asker';
	IF r <> 0.0364 THEN RAISE EXCEPTION 'a second envelope did not replace the first: %', r; END IF;
END \$\$});
pass('a subtransaction\'s abort gives it back, and one envelope replaces another');
my $pid = $ea->query_safe('SELECT pg_backend_pid()');
$ea->{stdin} .= "SELECT $open, pg_sleep(60);\n";
$ea->{run}->pump_nb;
ok($node->poll_query_until('postgres', $holds), 'a long statement holds it');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
$node->poll_query_until('postgres', "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $pid)")
	or die 'the terminated session is still there';
is($node->safe_psql('postgres', $reserved), '0', 'a backend that exits gives it back');
($ret, $out, $err) = $node->psql('postgres', q{SET maester.tenant = 'asker';
	SELECT maester.ask_budget_open('mock-b', 'q', 'ask_like', NULL,
		'{"question": "x", "sources": "y"}', 'mock-b', 1000, '{}')});
like($err, qr/budget \d+ of tenant "asker" would be exceeded by [0-9.]+ USD at worst.*the ask's query embedding and answer could cost up to 0\.1515/s,
	'an envelope that does not fit is refused, naming its worst case');
is($node->safe_psql('postgres', $reserved), '0', 'and reserves nothing');

$node->stop;
$mock->stop;
done_testing();
