/*-------------------------------------------------------------------------
 *
 * secrets.c
 *	  Providers' API keys, read in C from the server's environment or from
 *	  a key file, never from SQL.
 *
 * A provider row names where its key is (api_key_env: the name of an
 * environment variable of the server; api_key_file: a file name), never
 * the key itself, so keys appear in no table, SQL text, log line or
 * pg_stat_activity.  Admins are not superusers, so what they may name is
 * limited, to stop a provider row from sending some other secret of the
 * server to a host of their choosing:
 *	 - api_key_env must look like a key: letters, digits and underscores,
 *	   ending in _KEY or _TOKEN (OPENAI_API_KEY, ANTHROPIC_API_KEY, HF_TOKEN);
 *	 - api_key_file is a plain file name inside maester.key_directory (a
 *	   superuser-only setting, empty by default: no key files), owned by the
 *	   server's OS user and not accessible to group or others;
 *	 - a key is sent only to the hosts the superuser bound it to in
 *	   maester.key_hosts (OPENAI_API_KEY to api.openai.com and
 *	   ANTHROPIC_API_KEY to api.anthropic.com by default), so that an admin
 *	   who repoints a provider at a host of their own receives no key: the
 *	   call fails (42501) before anything is sent.
 * A key is returned palloc'd; callers wipe it with maester_forget_key().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/fd.h"

#include "hostlist.h"
#include "http.h"
#include "maester.h"
#include "secrets.h"
#include "settings.h"


/*
 * Refuse (42501) to send the key `name` (a variable name, or "file:" and a
 * file name) of `provider` to `url`, unless maester.key_hosts binds it to
 * the URL's host and port.
 */
static void
check_key_host(const char *provider, const char *name, const char *url)
{
	int			port;
	bool		https;
	char	   *host = http_url_host(url, &port, &https);
	const char *p = maester_key_hosts;
	const char *e;
	size_t		len;
	bool		named = false;

	while (p && hostlist_next(&p, &e, &len))
	{
		const char *n;
		const char *h;
		size_t		nlen;
		size_t		hlen;

		if (!keyhosts_entry(e, len, &n, &nlen, &h, &hlen) ||
			nlen != strlen(name) || strncmp(n, name, nlen) != 0)
			continue;
		named = true;
		if (hostlist_entry_matches(h, hlen, host, port))
		{
			pfree(host);
			return;
		}
	}
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("the key of provider \"%s\" may not be sent to \"%s:%d\"", provider, host, port),
			 named ?
			 errdetail("maester.key_hosts binds %s to other hosts.", name) :
			 errdetail("maester.key_hosts binds %s to no host.", name),
			 errhint("A superuser binds a key to the hosts it may be sent to, e.g. maester.key_hosts = '..., %s=%s'.",
					 name, host)));
}

/* Read the key file `file` of `provider`; see the header comment */
static char *
read_key_file(const char *provider, const char *file)
{
	char		path[MAXPGPATH];
	struct stat st;
	int			fd;
	ssize_t		nread;
	char		buf[1024];
	size_t		n;
	char	   *key;

	if (maester_key_directory == NULL || maester_key_directory[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_MAESTER_NO_KEY),
				 errmsg("key files are disabled"),
				 errdetail("Provider \"%s\" names a key file, but maester.key_directory is not set.", provider)));
	if (strchr(file, '/') != NULL || strcmp(file, ".") == 0 || strcmp(file, "..") == 0 ||
		file[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_MAESTER_NO_KEY),
				 errmsg("invalid key file name for provider \"%s\"", provider),
				 errdetail("A key file is a plain file name inside maester.key_directory.")));
	snprintf(path, sizeof(path), "%s/%s", maester_key_directory, file);
	if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
		ereport(ERROR,
				(errcode(ERRCODE_MAESTER_NO_KEY),
				 errmsg("key file of provider \"%s\" does not exist", provider)));
	if (st.st_uid != geteuid() || (st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_MAESTER_NO_KEY),
				 errmsg("key file of provider \"%s\" has unsafe permissions", provider),
				 errdetail("It must be owned by the database server's user and have mode 0600 or stricter.")));
	/* read(2) into our buffer: no stdio buffer keeps a copy of the key */
	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
		ereport(ERROR,
				(errcode(ERRCODE_MAESTER_NO_KEY),
				 errmsg("could not read the key file of provider \"%s\"", provider)));
	nread = read(fd, buf, sizeof(buf) - 1);
	CloseTransientFile(fd);
	n = nread > 0 ? (size_t) nread : 0;
	buf[n] = '\0';
	/* first line, without surrounding blanks */
	buf[strcspn(buf, "\r\n")] = '\0';
	key = buf;
	while (*key == ' ' || *key == '\t')
		key++;
	n = strlen(key);
	while (n > 0 && (key[n - 1] == ' ' || key[n - 1] == '\t'))
		key[--n] = '\0';
	key = pstrdup(key);
	explicit_bzero(buf, sizeof(buf));
	return key;
}

/*
 * The API key of a provider, palloc'd, to be sent to `url`, or NULL for a
 * keyless provider (both key_env and key_file NULL).  When the named
 * environment variable is not set, returns NULL and sets *missing (so that
 * the gateway can fall back to another provider); a bad configuration
 * raises MG007, a key not bound to the URL's host 42501.
 */
char *
maester_provider_key(const char *provider, const char *key_env,
					 const char *key_file, const char *url, char **missing)
{
	*missing = NULL;
	if (key_env != NULL)
	{
		const char *v;

		if (!keyhosts_key_name_ok(key_env))
			ereport(ERROR,
					(errcode(ERRCODE_MAESTER_NO_KEY),
					 errmsg("invalid api_key_env \"%s\" for provider \"%s\"", key_env, provider),
					 errdetail("The name of a key variable consists of letters, digits and underscores and ends in _KEY or _TOKEN.")));
		v = getenv(key_env);
		if (v == NULL || v[0] == '\0')
		{
			*missing = psprintf("the server's environment has no %s", key_env);
			return NULL;
		}
		check_key_host(provider, key_env, url);
		return pstrdup(v);
	}
	if (key_file != NULL)
	{
		char	   *name = psprintf("file:%s", key_file);

		check_key_host(provider, name, url);
		pfree(name);
		return read_key_file(provider, key_file);
	}
	return NULL;
}

/* Wipe and free a key returned by maester_provider_key */
void
maester_forget_key(char *key)
{
	if (key != NULL)
	{
		explicit_bzero(key, strlen(key));
		pfree(key);
	}
}
