/*
 * flush_floor: the disk's part of test/bench/gateway.sh.  Writes 8 kB (a
 * WAL page) at one of 64 offsets of a file in DIR and flushes it with
 * fdatasync, as a commit does with PostgreSQL's default wal_sync_method on
 * Linux, N times, and prints each write and flush's latency in
 * microseconds, one per line.  Two of them are what the durable ledger
 * adds to every call at the least (PENDING before the request leaves,
 * SETTLE before the call returns).
 *
 *   flush_floor DIR N
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
	char		path[4096];
	char		page[8192];
	int			fd;
	int			n;

	if (argc != 3 || (n = atoi(argv[2])) <= 0)
	{
		fprintf(stderr, "usage: flush_floor DIR N\n");
		return 2;
	}
	snprintf(path, sizeof(path), "%s/flush_floor.%d", argv[1], (int) getpid());
	fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd < 0)
	{
		perror(path);
		return 1;
	}
	memset(page, 'x', sizeof(page));
	for (int i = 0; i < n; i++)
	{
		struct timespec a,
					b;

		clock_gettime(CLOCK_MONOTONIC, &a);
		if (pwrite(fd, page, sizeof(page), (off_t) (i % 64) * sizeof(page)) != sizeof(page) ||
			fdatasync(fd) != 0)
		{
			perror(path);
			unlink(path);
			return 1;
		}
		clock_gettime(CLOCK_MONOTONIC, &b);
		printf("%.1f\n", (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3);
	}
	close(fd);
	unlink(path);
	return 0;
}
