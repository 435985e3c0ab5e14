/*-------------------------------------------------------------------------
 *
 * secrets.h
 *	  Providers' API keys, from the server's environment or key files.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_SECRETS_H
#define MAESTER_SECRETS_H

extern char *maester_provider_key(const char *provider, const char *key_env,
								  const char *key_file, const char *url,
								  char **missing);
extern void maester_forget_key(char *key);

#endif							/* MAESTER_SECRETS_H */
