# A dropped database gives its ledger slot back: with maester.max_databases
# = 1, a database using maester is dropped (WITH (FORCE), which ends its
# workers), and another database can then use maester; the launcher does
# not keep starting workers for the dropped one.
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
my $node = PostgreSQL::Test::Cluster->new('dropdb');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'maester'
wal_level = replica
maester.allow_insecure_hosts = '127.0.0.1'
maester.max_databases = 1
});
$node->start;

my $setup = qq{
	CREATE EXTENSION maester;
	INSERT INTO maester.provider (name, kind, base_url, models, max_attempts)
	VALUES ('mock', 'openai_compatible', '$url/open/v1', '{mock-%}', 1);
	INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
	VALUES ('mock-a', '2020-01-01', 1, 2);
};
my $call = q{SELECT content IS NOT NULL FROM maester.llm_generate('hello', 'mock-a')};

$node->safe_psql('postgres', 'CREATE DATABASE one');
$node->safe_psql('one', $setup);
is($node->safe_psql('one', $call), 't', 'a call in the first database');
my $oid = $node->safe_psql('postgres', q{SELECT oid FROM pg_database WHERE datname = 'one'});

$node->safe_psql('postgres', 'CREATE DATABASE two');
$node->safe_psql('two', $setup);
my ($ret, $out, $err) = $node->psql('two', $call);
isnt($ret, 0, 'with the only slot taken, a second database cannot call');

$node->safe_psql('postgres', 'DROP DATABASE one WITH (FORCE)');
ok($node->poll_query_until('two', $call), 'after the drop, the second database can call');
ok($node->log_contains("freed the slot of database $oid"), 'the launcher freed the slot');
is($node->safe_psql('two', q{SELECT count(*) FROM maester.usage WHERE status = 'ok'}), 1,
	'its call is in its ledger');

# no worker for the dropped database is started any more
my $log = slurp_file($node->logfile);
my $starts = () = $log =~ /database $oid/g;
sleep(3);
$log = slurp_file($node->logfile);
my $later = () = $log =~ /database $oid/g;
is($later, $starts, 'the launcher leaves the dropped database alone');

$node->stop;
done_testing();
