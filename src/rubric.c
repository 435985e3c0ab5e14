/*-------------------------------------------------------------------------
 *
 * rubric.c
 *	  The llm_rubric check: a model grades an output against a rubric.
 *
 * The check's parameter is the rubric, or {"rubric", "model"}; in an
 * assertion ({"type": "llm_rubric", "value": ...}) "model" may stand
 * beside the value.  The grading model is asked, with a fixed system
 * prompt, for one JSON object {"pass", "score", "reason"}; an answer that
 * is not such a verdict fails the check, saying so.  The call itself is
 * made by the call machine, as a call of its own (purpose 'evaluation',
 * its own ledger row, a child of the graded call's trace): machine.c and
 * call.c; this file only words the question and reads the answer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/numeric.h"

#include "jsonutil.h"
#include "rubric.h"

/*
 * The prompt and model (NULL: the default route) of the grading call for
 * one llm_rubric check on `content`; raises 22023 without a rubric.
 */
void
rubric_question(JsonbValue *param, JsonbContainer *extra, const char *content,
				int len, char **prompt, char **model)
{
	char	   *rubric = NULL;

	*model = NULL;
	if (param != NULL && param->type == jbvString)
		rubric = pnstrdup(param->val.string.val, param->val.string.len);
	else if (param != NULL && param->type == jbvBinary && JsonContainerIsObject(param->val.binary.data))
	{
		rubric = json_get_string(param->val.binary.data, "rubric");
		*model = json_get_string(param->val.binary.data, "model");
	}
	if (*model == NULL && extra != NULL)
		*model = json_get_string(extra, "model");
	if (rubric == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("check \"llm_rubric\" needs a rubric"),
				 errhint("Write {\"llm_rubric\": \"The answer names the service.\"} or {\"llm_rubric\": {\"rubric\": \"...\", \"model\": \"...\"}}.")));
	*prompt = psprintf("Rubric:\n%s\n\nOutput to grade:\n%.*s", rubric, len, content);
}

/* Read a grader's answer: {pass, score, reason}; anything else fails */
void
rubric_verdict(const char *answer, double *score, bool *passed, char **reason)
{
	char	   *problem = NULL;
	Jsonb	   *verdict = answer ? json_parse_object(answer, &problem) : NULL;
	JsonbValue *pv = verdict ? json_get(&verdict->root, "pass") : NULL;
	JsonbValue *sv = verdict ? json_get(&verdict->root, "score") : NULL;

	if (pv == NULL || pv->type != jbvBool)
	{
		*score = 0;
		*passed = false;
		*reason = pstrdup("The grader did not answer with a JSON verdict {pass, score, reason}");
		return;
	}
	*passed = pv->val.boolean;
	*score = *passed ? 1 : 0;
	if (sv && sv->type == jbvNumeric)
	{
		/* a score beyond double precision (1e400) is out of [0, 1], not an error */
		double		d = json_numeric_double(sv->val.numeric);

		if (d >= 0 && d <= 1)
			*score = d;
	}
	*reason = *passed ? NULL : json_get_string(&verdict->root, "reason");
	if (!*passed && *reason == NULL)
		*reason = pstrdup("The grader failed the output");
}
