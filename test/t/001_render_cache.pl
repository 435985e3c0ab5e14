# The per-backend render cache follows changes made by other sessions:
# new versions, label moves, rollouts and their weights, rollbacks, and
# even a re-created extension.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('cache');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'maester'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION maester');
$node->safe_psql('postgres',
	q{SELECT maester.prompt_register('p', 'one {x}', version => 'v1')});

# session A renders and so fills its cache
my $a = $node->background_psql('postgres');
my $render = q{SELECT version || ':' || content FROM maester.prompt_render('p', '{"x": 1}')};
is($a->query_safe($render), 'v1:one 1', 'A renders v1');

# B registers v2: A's next render sees it
$node->safe_psql('postgres',
	q{SELECT maester.prompt_register('p', 'two {x}')});
is($a->query_safe($render), 'v2:two 1', 'A sees the version B registered');

# label moves
$node->safe_psql('postgres',
	q{SELECT maester.prompt_set_label('p', 'production', 'v1')});
my $prod = q{SELECT version FROM maester.prompt_render('p', '{"x": 1}', 'production')};
is($a->query_safe($prod), 'v1', 'A renders production = v1');
$node->safe_psql('postgres',
	q{SELECT maester.prompt_set_label('p', 'production', 'v2')});
is($a->query_safe($prod), 'v2', 'A sees the label move');

# rollouts: A sees a split, its end and a change of weights at once.  A
# renders 200 sticky keys by the label (the key differs per row, so every
# row is rendered): "v1 count/distinct versions".
my $b = $node->background_psql('postgres');
my $split = q{SELECT count(*) FILTER (WHERE r.version = 'v1') || '/' || count(DISTINCT r.version)
  FROM generate_series(1, 200) k,
       LATERAL maester.prompt_render('p', '{"x": 1}', 'production', 'key-' || k) r};
is($a->query_safe($split), '0/1', 'A renders production = v2 for every key');
$node->safe_psql('postgres',
	q{SELECT maester.prompt_set_rollout('p', 'production', '{"v1": 50, "v2": 50}')});
like($a->query_safe($split), qr{^\d+/2$}, 'A sees the rollout B set');
my $fifty = $a->query_safe($split);
ok($fifty =~ m{^(\d+)/} && $1 >= 60 && $1 <= 140, "keys spread 50/50 ($fifty)");

# a change of weights alone (the main arm stays v1)
$node->safe_psql('postgres',
	q{SELECT maester.prompt_set_rollout('p', 'production', '{"v1": 99, "v2": 1}')});
my $ninety_nine = $a->query_safe($split);
ok($ninety_nine =~ m{^(\d+)/} && $1 >= 185, "A sees the new weights ($ninety_nine)");

# an uncommitted end of the rollout is invisible until it commits
$b->query_safe('BEGIN');
$b->query_safe(q{SELECT maester.prompt_set_label('p', 'production', 'v1')});
is($a->query_safe($split), $ninety_nine, 'uncommitted end of the rollout is not visible');
$b->query_safe('COMMIT');
is($a->query_safe($split), '200/1', 'A sees the rollout ended');

# a rolled-back rollout never becomes visible
$b->query_safe('BEGIN');
$b->query_safe(q{SELECT maester.prompt_set_rollout('p', 'production', '{"v1": 1, "v2": 1}')});
$b->query_safe('ROLLBACK');
is($a->query_safe($split), '200/1', 'rolled-back rollout is not visible');

# inside one long transaction of A, a rollout B commits is seen at once
$a->query_safe('BEGIN');
is($a->query_safe($split), '200/1', 'A in a transaction renders v1');
$node->safe_psql('postgres',
	q{SELECT maester.prompt_set_rollout('p', 'production', '{"v1": 50, "v2": 50}')});
is($a->query_safe($split), $fifty, 'A sees the rollout within its transaction, the same keys on the same arms');
$a->query_safe('COMMIT');

# an uncommitted registration is invisible until it commits
$b->query_safe('BEGIN');
$b->query_safe(q{SELECT maester.prompt_register('p', 'three {x}')});
is($a->query_safe($render), 'v2:two 1', 'uncommitted v3 is not visible');
$b->query_safe('COMMIT');
is($a->query_safe($render), 'v3:three 1', 'committed v3 is visible');

# a rolled-back registration never becomes visible
$b->query_safe('BEGIN');
$b->query_safe(q{SELECT maester.prompt_register('p', 'four {x}')});
$b->query_safe('ROLLBACK');
is($a->query_safe($render), 'v3:three 1', 'rolled-back v4 is not visible');

# inside one long transaction of A, a commit by B is seen at the next render
$a->query_safe('BEGIN');
is($a->query_safe($render), 'v3:three 1', 'A in a transaction renders v3');
$node->safe_psql('postgres',
	q{SELECT maester.prompt_register('p', 'five {x}')});
is($a->query_safe($render), 'v4:five 1',
	'A sees the new version within its transaction');
$a->query_safe('COMMIT');

# the registry dropped and re-created under A's feet
$b->query_safe('DROP EXTENSION maester');
$b->query_safe('CREATE EXTENSION maester');
$b->query_safe(q{SELECT maester.prompt_register('p', 'fresh {x}')});
is($a->query_safe($render), 'v1:fresh 1', 'A follows a re-created extension');

# many sessions render concurrently while versions change
$node->safe_psql('postgres', q{
	SELECT maester.prompt_register('q', 'q{x}', version => 'v0')});
my @bg = map { $node->background_psql('postgres') } 1 .. 4;
for my $i (1 .. 5)
{
	$node->safe_psql('postgres',
		"SELECT maester.prompt_register('q', 'q{x}-$i', version => 'r$i')");
	for my $s (@bg)
	{
		is($s->query_safe(q{SELECT version FROM maester.prompt_render('q', '{"x": 0}')}),
			"r$i", "session sees r$i");
	}
}
$_->quit for (@bg, $a, $b);

$node->stop;
done_testing();
