/*-------------------------------------------------------------------------
 *
 * registry.h
 *	  The prompt registry, for the gateway: rendering and the prompt hash.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_REGISTRY_H
#define MAESTER_REGISTRY_H

#include "nodes/pg_list.h"
#include "utils/jsonb.h"

#include "maester.h"

typedef struct RenderedPrompt
{
	char	   *name;
	char	   *version;
	text	   *content;
	text	   *system;			/* NULL: no system template */
	List	   *messages;		/* a chat prompt's conversation (GenMessage);
								 * content and system are then NULL */
	char		hash[MAESTER_SHA256_HEXLEN + 1];
	Jsonb	   *checks;			/* the version's checks (cache memory), or NULL */
	Jsonb	   *config;			/* the version's config (cache memory), or NULL */
	const char *rollout_label;	/* ref was a label in a rollout: the label */
	const char *rollout_weights;	/* and its weights' jsonb text; else NULL */
} RenderedPrompt;

extern void registry_init(void);
extern void maester_render(const char *name, const char *ref, Jsonb *vars,
						   const char *sticky_key, RenderedPrompt *out);
extern void maester_prompt_hash(text *system, text *content, char *hex_out);

#endif							/* MAESTER_REGISTRY_H */
