/*-------------------------------------------------------------------------
 *
 * hostlist.c
 *	  Lists of hosts the superuser allows: maester.allow_insecure_hosts (plain
 *	  http and private addresses) and maester.key_hosts (where each provider
 *	  key may be sent).  Parsing and matching only: no setting is read here,
 *	  so that the settings' check hooks and their users can share it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "hostlist.h"

/*
 * Host lists (maester.allow_insecure_hosts, the hosts of maester.key_hosts)
 * name hosts as provider URLs do, each entry one of
 *	 host			any port of that host (a name, an IPv4 or IPv6 address)
 *	 host:port		that port only ("[v6]:port" for an IPv6 address)
 *	 *.domain		any host below domain (not domain itself), any port;
 *	 *.domain:port	the same, that port only
 * Names compare without regard to case; nothing else is a wildcard.
 */

/*
 * Split one entry (len bytes at e) into its host part and port (0: any).
 * Returns false when the entry is malformed.
 */
static bool
host_entry_parse(const char *e, size_t len, const char **h, size_t *hlen, int *port)
{
	const char *colon = NULL;

	*port = 0;
	if (len == 0)
		return false;
	if (e[0] == '[')
	{
		const char *close = memchr(e, ']', len);

		if (close == NULL || close == e + 1)
			return false;
		*h = e + 1;
		*hlen = close - e - 1;
		if (close + 1 < e + len)
		{
			if (close[1] != ':')
				return false;
			colon = close + 1;
		}
	}
	else
	{
		const char *c1 = memchr(e, ':', len);

		*h = e;
		*hlen = len;
		/* one colon: host:port; more: a bare IPv6 address */
		if (c1 != NULL && memchr(c1 + 1, ':', e + len - c1 - 1) == NULL)
		{
			colon = c1;
			*hlen = c1 - e;
		}
	}
	if (colon != NULL)
	{
		long		v = 0;
		const char *q = colon + 1;

		if (q == e + len)
			return false;
		for (; q < e + len; q++)
		{
			if (*q < '0' || *q > '9')
				return false;
			v = v * 10 + (*q - '0');
			if (v > 65535)
				return false;
		}
		if (v == 0)
			return false;
		*port = (int) v;
	}
	if (*hlen == 0)
		return false;
	/* a wildcard only as a whole first label */
	for (size_t i = 0; i < *hlen; i++)
		if ((*h)[i] == '*' && (i != 0 || *hlen < 3 || (*h)[1] != '.'))
			return false;
	return true;
}

/*
 * The next entry of a list (separated by commas and blanks): its start and
 * length, or false at the end.  *p advances past it.
 */
bool
hostlist_next(const char **p, const char **start, size_t *len)
{
	const char *s = *p;

	while (*s == ',' || *s == ' ' || *s == '\t')
		s++;
	if (*s == '\0')
		return false;
	*start = s;
	while (*s && *s != ',' && *s != ' ' && *s != '\t')
		s++;
	*len = s - *start;
	*p = s;
	return true;
}

/*
 * Does the entry (len bytes at e) match `host` (as curl gives it: IPv6 in
 * brackets) on `port`?
 */
bool
hostlist_entry_matches(const char *e, size_t len, const char *host, int port)
{
	const char *h;
	size_t		hl;
	int			eport;
	size_t		hostlen;

	if (host == NULL || !host_entry_parse(e, len, &h, &hl, &eport))
		return false;
	if (eport != 0 && eport != port)
		return false;
	hostlen = strlen(host);
	if (hostlen > 2 && host[0] == '[' && host[hostlen - 1] == ']')
	{
		host++;
		hostlen -= 2;
	}
	if (h[0] == '*')
	{
		/* "*.domain": the host ends in ".domain" and has a label before it */
		return hostlen > hl - 1 &&
			pg_strncasecmp(host + hostlen - (hl - 1), h + 1, hl - 1) == 0;
	}
	return hostlen == hl && pg_strncasecmp(host, h, hl) == 0;
}

/* Is `host` on `port` matched by an entry of the host list `list`? */
bool
hostlist_match(const char *list, const char *host, int port)
{
	const char *p = list;
	const char *e;
	size_t		len;

	if (host == NULL || p == NULL)
		return false;
	while (hostlist_next(&p, &e, &len))
		if (hostlist_entry_matches(e, len, host, port))
			return true;
	return false;
}

/*
 * Is `list` a valid host list?  If not, *bad is the first bad entry
 * (palloc'd, for a GUC check hook's detail).
 */
bool
hostlist_valid(const char *list, char **bad)
{
	const char *p = list;
	const char *e;
	size_t		len;

	while (p && hostlist_next(&p, &e, &len))
		if (!hostlist_entry_valid(e, len))
		{
			*bad = pnstrdup(e, Min(len, 64));
			return false;
		}
	return true;
}

/* Is the entry (len bytes at e) well formed? */
bool
hostlist_entry_valid(const char *e, size_t len)
{
	const char *h;
	size_t		hl;
	int			port;

	return host_entry_parse(e, len, &h, &hl, &port);
}

/* Does `name` look like the name of an environment variable holding a key? */
bool
keyhosts_key_name_ok(const char *name)
{
	size_t		len = strlen(name);

	if (len == 0 || len > 128 || (name[0] >= '0' && name[0] <= '9'))
		return false;
	for (const char *p = name; *p; p++)
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			  (*p >= '0' && *p <= '9') || *p == '_'))
			return false;
	return (len > 4 && strcmp(name + len - 4, "_KEY") == 0) ||
		(len > 6 && strcmp(name + len - 6, "_TOKEN") == 0);
}

/*
 * Split an entry NAME=host of maester.key_hosts (len bytes at e): *name and
 * *nlen the key's name (a variable, or "file:" and a file name), *host and
 * *hlen the host entry.  False when malformed.
 */
bool
keyhosts_entry(const char *e, size_t len, const char **name, size_t *nlen,
			   const char **host, size_t *hlen)
{
	const char *eq = memchr(e, '=', len);
	char		buf[136];

	if (eq == NULL)
		return false;
	*name = e;
	*nlen = eq - e;
	*host = eq + 1;
	*hlen = e + len - eq - 1;
	if (*nlen == 0 || *nlen >= sizeof(buf) || !hostlist_entry_valid(*host, *hlen))
		return false;
	memcpy(buf, e, *nlen);
	buf[*nlen] = '\0';
	if (strncmp(buf, "file:", 5) == 0)
		return buf[5] != '\0' && strchr(buf + 5, '/') == NULL &&
			strcmp(buf + 5, ".") != 0 && strcmp(buf + 5, "..") != 0;
	return keyhosts_key_name_ok(buf);
}

/* Is maester.key_hosts' value `list` well formed?  (*bad: the first bad entry) */
bool
keyhosts_valid(const char *list, char **bad)
{
	const char *p = list;
	const char *e;
	size_t		len;

	while (hostlist_next(&p, &e, &len))
	{
		const char *name;
		const char *host;
		size_t		nlen;
		size_t		hlen;

		if (!keyhosts_entry(e, len, &name, &nlen, &host, &hlen))
		{
			*bad = pnstrdup(e, Min(len, 64));
			return false;
		}
	}
	return true;
}

