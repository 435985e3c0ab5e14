# The response cache under concurrency and across restarts:
# 1. Sessions racing on the same cacheable call all get an answer, and one
#    entry is kept; the next call is a hit.
# 2. A hit's ledger row is durable when the call returns: an immediate
#    shutdown right after it keeps the row (status cached, $0, saved_usd).
# 3. The resident worker deletes expired entries (it checks at start and
#    every minute), never live ones.
# 4. A tenant's entries are never another's hits, also across sessions.
# 5. A user's locks on expired entries never stall the purge (nor, with
#    it, the ledger the same worker writes).
# 6. Jobs use the cache too, and job.cached says so.
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
my $node = PostgreSQL::Test::Cluster->new('respcache');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
maester.allow_insecure_hosts = '127.0.0.1'
max_connections = 40
});
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, max_attempts, circuit_failure_threshold)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{}', 1, 0);
	INSERT INTO maester.model (name, provider, provider_model)
	VALUES ('slow', 'mock', 'fault-latency-300'), ('quick', 'mock', 'mock-quick');
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('slow', '2020-01-01', 1, 2), ('quick', '2020-01-01', 1, 2);
});
my $cached = q{SELECT cached FROM maester.llm_generate('the same question', 'slow',
	options => '{"cache": true, "temperature": 0}')};

# 1. eight sessions at once, one key
my @s = map { $node->background_psql('postgres') } 1 .. 8;
my $before = $mock->stats->{requests};
$_->{stdin} .= "$cached;\n" for @s;
$_->{run}->pump_nb for @s;
# each session's output: its racing call's "cached", then the 1 it waits on
my $answered = grep { $_->query_safe('SELECT 1') =~ /^[tf]\n1$/ } @s;
$_->quit for @s;
is($answered, 8, 'every racing session got its answer');
is($node->safe_psql('postgres', q{SELECT count(*) FROM maester.response_cache}), '1',
	'eight sessions racing on one key keep one entry');
my $sent = $mock->stats->{requests} - $before;
cmp_ok($sent, '>=', 1, "the racing calls were sent ($sent requests)");
cmp_ok($sent, '<=', 8, 'at most once each');
is($node->safe_psql('postgres', q{SELECT count(*) FROM maester.usage WHERE cache IN ('miss', 'hit')
	AND requested_model = 'slow'}), '8', 'every racing call has its ledger row');
is($node->safe_psql('postgres', $cached), 't', 'the next call is a hit');

# 2. a hit's row survives an immediate shutdown right after the call
my $rid = $node->safe_psql('postgres', q{SELECT request_id FROM maester.llm_generate('the same question', 'slow',
	options => '{"cache": true, "temperature": 0}')});
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', qq{SELECT status || ' ' || cost_usd || ' ' || (saved_usd > 0) || ' ' || cache
	FROM maester.usage WHERE request_id = '$rid'}), 'cached 0 true hit',
	'the hit is in the ledger after an immediate shutdown');

# 3. expired entries go, live ones stay
$node->safe_psql('postgres', q{
	SELECT maester.llm_generate('short-lived ' || i, 'quick',
	       options => '{"cache": {"ttl": "1 second"}, "temperature": 0}') FROM generate_series(1, 20) i;
	SELECT maester.llm_generate('long-lived', 'quick', options => '{"cache": {"ttl": "1 day"}, "temperature": 0}');
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM maester.response_cache WHERE requested_model = 'quick'}),
	'21', 'twenty short-lived entries and a long-lived one');
sleep 2;
$node->restart;
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM maester.response_cache WHERE requested_model = 'quick'}),
	'the resident worker deleted the expired entries');
is($node->safe_psql('postgres', q{SELECT prompt_hash IS NOT NULL FROM maester.response_cache c
	JOIN maester.usage u ON u.request_id = c.source_request_id WHERE c.requested_model = 'quick'}), 't',
	'the live entry stayed, and names the call that made it');

# 4. two tenants in two sessions: one's entry is never the other's hit
$node->safe_psql('postgres', q{
	CREATE ROLE t_one LOGIN; CREATE ROLE t_two LOGIN;
	GRANT maester_user TO t_one, t_two;
	INSERT INTO maester.tenant_member (role, tenant) VALUES ('t_one', 'one'), ('t_two', 'two');
});
my $q = q{SELECT cached FROM maester.llm_generate('a tenant''s question', 'quick',
	options => '{"cache": true, "temperature": 0}')};
is($node->safe_psql('postgres', $q, extra_params => [ '-U', 't_one' ]), 'f', 'tenant one: a miss');
is($node->safe_psql('postgres', $q, extra_params => [ '-U', 't_one' ]), 't', 'tenant one: then a hit');
is($node->safe_psql('postgres', $q, extra_params => [ '-U', 't_two' ]), 'f', 'tenant two: its own miss');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT tenant) FROM maester.response_cache
	WHERE content IS NOT NULL AND requested_model = 'quick' AND tenant IN ('one', 'two')}), '2', 'one entry each');

# 5. a user holding locks on expired entries (its own DELETE, left open)
#    never stalls the worker's purge, which writes the ledger too: the purge
#    skips the locked rows and takes the others
$node->safe_psql('postgres', q{
	SELECT maester.llm_generate('expiring ' || i, 'quick', options => '{"cache": {"ttl": "1 second"}, "temperature": 0}')
	  FROM generate_series(1, 3) i},
	extra_params => [ '-U', 't_one' ]);
$node->safe_psql('postgres', q{
	SELECT maester.llm_generate('expiring too ' || i, 'quick', options => '{"cache": {"ttl": "1 second"}, "temperature": 0}')
	  FROM generate_series(1, 4) i},
	extra_params => [ '-U', 't_two' ]);
sleep 2;
my $locker = $node->background_psql('postgres', extra_params => [ '-U', 't_one' ]);
$locker->query_safe('BEGIN');
$locker->query_safe(q{DELETE FROM maester.response_cache WHERE expires_at < now()});
# a new resident worker purges at once
$node->safe_psql('postgres', q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
	WHERE backend_type = 'maester worker' AND datname = 'postgres'});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM maester.response_cache
	WHERE tenant = 'two' AND expires_at < now()}),
	'the purge deleted the expired entries nobody had locked');
is($node->safe_psql('postgres', q{SELECT cached IS NOT NULL FROM maester.llm_generate('a probe', 'quick')},
	extra_params => [ '-U', 't_two' ]), 't', 'and the ledger goes on while the locks are held');
$locker->query_safe('ROLLBACK');
$locker->quit;
is($node->safe_psql('postgres', q{SELECT count(*) FROM maester.response_cache
	WHERE tenant = 'one' AND expires_at < now()}), '3', 'the locked entries are left for a later purge');

# 6. jobs use the cache too, and say so
my $submit = q{SELECT maester.submit('{"prompt": "a job''s question", "model": "quick",
	"options": {"cache": true, "temperature": 0}}')};
my @jobs;
for (1 .. 2)
{
	my $id = $node->safe_psql('postgres', $submit);
	ok($node->poll_query_until('postgres', "SELECT status = 'done' FROM maester.job WHERE id = $id"), "job $id done");
	push @jobs, $id;
}
is($node->safe_psql('postgres', qq{SELECT string_agg(cached::text || ' ' || ((result).cost_usd = 0)::text, ', ' ORDER BY id)
	FROM maester.job WHERE id IN ($jobs[0], $jobs[1])}), 'false false, true true',
	'the second job was answered by the cache, at $0');

$node->stop;
$mock->stop;
done_testing();
