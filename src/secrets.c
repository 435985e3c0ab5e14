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
 *	   server's OS user and not accessible to group or others.
 * A key is returned palloc'd; callers wipe it with maester_forget_key().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/fd.h"

#include "maester.h"
#include "secrets.h"
#include "settings.h"

/* Does `name` look like the name of an environment variable holding a key? */
static bool
key_env_name_ok(const char *name)
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
 * The API key of a provider, palloc'd, or NULL for a keyless provider
 * (both key_env and key_file NULL).  When the named environment variable is
 * not set, returns NULL and sets *missing (so that the gateway can fall
 * back to another provider); a bad configuration raises MG007.
 */
char *
maester_provider_key(const char *provider, const char *key_env,
					 const char *key_file, char **missing)
{
	*missing = NULL;
	if (key_env != NULL)
	{
		const char *v;

		if (!key_env_name_ok(key_env))
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
		return pstrdup(v);
	}
	if (key_file != NULL)
		return read_key_file(provider, key_file);
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
