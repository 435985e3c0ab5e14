/*-------------------------------------------------------------------------
 *
 * template.h
 *	  Prompt templates: parse, validate and render `{name}` templates.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MAESTER_TEMPLATE_H
#define MAESTER_TEMPLATE_H

#include "utils/jsonb.h"

/*
 * One piece of a compiled template: a run of literal text (with `{{` and
 * `}}` already unescaped) followed, unless var < 0, by the value of the
 * variable with that index in CompiledTemplate.vars.
 */
typedef struct TemplateSegment
{
	int			lit_off;		/* offset of the literal run in ->literal */
	int			lit_len;		/* its length in bytes */
	int			var;			/* index into ->vars, or -1 */
} TemplateSegment;

/*
 * A template ready to render.  Everything lives in one memory context chosen
 * by the caller of template_compile().
 */
typedef struct CompiledTemplate
{
	char	   *literal;		/* all literal text, concatenated */
	int			literal_len;
	int			nsegs;
	TemplateSegment *segs;
	int			nvars;			/* distinct variables, first-use order */
	char	  **vars;			/* NUL-terminated names */
	int		   *var_lens;
	int		   *slots;			/* open-addressing index of vars: -1 empty */
	int			nslots;			/* a power of two, at least 2 * nvars */
} CompiledTemplate;

extern CompiledTemplate *template_compile(const char *src, int len,
										  const char *what);
extern text *template_render(const CompiledTemplate *tmpl,
							 JsonbContainer *variables, StringInfo missing);
extern int	template_var_index(const CompiledTemplate *tmpl, const char *name,
							   int len);
extern void template_check_variables(Jsonb *variables);
extern void jsonb_to_compact_text(StringInfo out, JsonbContainer *container);

#endif							/* MAESTER_TEMPLATE_H */
