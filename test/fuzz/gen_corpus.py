#!/usr/bin/python3
"""gen_corpus.py -- (re)write the seed corpora under test/fuzz/corpus/.

Seeds come from the tests: templates and variables from the
prompt_register / prompt_render / template_variables calls in sql/*.sql and
test/t/*.pl; response bodies, error bodies and headers from what the mock
provider test/mock/mock_llm.py answers (its Answer.render and error_body,
imported, and the bodies of its faults).  Not run by run.sh: the corpus is
kept in the tree; run this after the tests or the mock change.
"""
import glob
import hashlib
import json
import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "test", "mock"))
sys.dont_write_bytecode = True   # leave no __pycache__ in test/mock
import mock_llm  # noqa: E402

SEP = "\n%%\n"
KEY = "sk-fuzz-0123456789abcdef"   # the key the harness pretends to use (targets.c)

LIT = r"'((?:[^']|'')*)'"           # an SQL string literal


def unsql(s):
    return s.replace("''", "'")


def sources():
    for path in sorted(glob.glob(os.path.join(ROOT, "sql", "*.sql")) +
                       glob.glob(os.path.join(ROOT, "test", "t", "*.pl"))):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith(".pl"):
            text = text.replace("\\n", "\n")
        yield text


def templates_and_variables():
    templates, systems, renders, by_name = [], [], [], {}
    for text in sources():
        for m in re.finditer(r"template_variables\(\s*" + LIT, text):
            templates.append(unsql(m.group(1)))
        for m in re.finditer(r"prompt_register\(\s*" + LIT + r"\s*,\s*" + LIT + r"([^;]*)", text):
            name, tmpl = unsql(m.group(1)), unsql(m.group(2))
            templates.append(tmpl)
            sm = re.search(r"system_template\s*=>\s*" + LIT, m.group(3))
            sys_t = unsql(sm.group(1)) if sm else None
            if sys_t is not None:
                systems.append(sys_t)
            by_name.setdefault(name, (tmpl, sys_t))
        for m in re.finditer(r"prompt_render\(\s*" + LIT + r"\s*,\s*" + LIT, text):
            renders.append((unsql(m.group(1)), unsql(m.group(2))))
    return templates, systems, renders, by_name


def names_in(tmpl):
    return list(dict.fromkeys(re.findall(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}", tmpl)))


def template_seeds():
    templates, systems, renders, by_name = templates_and_variables()
    out = []
    for t in dict.fromkeys(templates + systems):
        out.append(t)
        names = names_in(t)
        if names:
            out.append(t + SEP + json.dumps({n: "value of " + n for n in names}))
            out.append(t + SEP + json.dumps({n: [1, {"k": True}] for n in names}))
            out.append(t + SEP + json.dumps({names[0]: None}))
    for name, vars_ in renders:
        tmpl, sys_t = by_name.get(name, (None, None))
        if tmpl is None:
            continue
        seed = tmpl + SEP + vars_
        if sys_t is not None:
            seed += SEP + sys_t
        out.append(seed)
    return out


def answer(kind, model="gpt-4o-mini", prompt="Summarise: disk full", **req):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if kind == "anthropic":
        body["max_tokens"] = req.pop("max_tokens", 1024)
        body["system"] = req.pop("system", "You are terse.")
    body.update(req)
    return mock_llm.Answer(kind, body, {})


def fixed(doc):
    """Make a rendered answer deterministic (ids and times are random)."""
    if "id" in doc:
        doc["id"] = doc["id"].split("_")[0].split("-")[0] + "-fuzzseed"
    if "created" in doc:
        doc["created"] = 1700000000
    return doc


def response_seeds(kind):
    out = []
    a = answer(kind)
    out.append(json.dumps(fixed(a.render())))
    out.append(json.dumps(fixed(a.render(usage=False))))                 # nousage
    out.append(json.dumps(fixed(a.render(out_tokens=123456789))))        # usage-N
    t = answer(kind, max_tokens=2) if kind == "anthropic" else answer(kind, max_tokens=2)
    out.append(json.dumps(fixed(t.render())))                            # truncated
    c = answer(kind)
    c.cache_read, c.cache_write = 30, 10                                 # cached-30-10
    c.input_tokens = max(c.input_tokens, 40)
    out.append(json.dumps(fixed(c.render())))
    if kind == "openai":
        j = answer(kind, response_format={"type": "json_object"})
        out.append(json.dumps(fixed(j.render())))
    verdict = json.dumps({"pass": True, "score": 0.9, "reason": "meets the rubric"})
    out.append(json.dumps(fixed(a.render(content=verdict))))             # verdict-pass
    out.append(json.dumps(fixed(a.render(content="h\u00e9llo \u2603 \U0001F600"))))
    out.append('{"id": "x", "choices": [')                               # malformed
    bad = json.dumps(fixed(a.render(content="ok MARK bad")))             # badutf8
    out.append(bad.replace("MARK", "\\u00ff\\u00fe"))
    if kind == "anthropic":                                              # missingfields
        out.append(json.dumps({"id": "msg_x", "type": "message", "model": "m"}))
    else:
        out.append(json.dumps({"id": "chatcmpl-x", "object": "chat.completion", "model": "m"}))
    out.append(json.dumps(mock_llm.error_body(kind, 400, "mock error 400")))
    out.append("<html><body>Bad gateway page</body></html>")             # wrongtype
    return out


def error_seeds():
    out = []
    for kind in ("openai", "anthropic"):
        for status in (400, 401, 403, 404, 422, 429, 500, 503, 529):
            out.append(json.dumps(mock_llm.error_body(kind, status, "mock error %d" % status)))
        out.append(json.dumps(mock_llm.error_body(kind, 429, "mock rate limit exceeded",
                                                  code="rate_limit_exceeded")))
        lines = "\n".join(["Host: 127.0.0.1:5701", "Content-Type: application/json",
                           "Authorization: Bearer " + KEY, "x-api-key: " + KEY,
                           "anthropic-version: 2023-06-01"])
        out.append(json.dumps(mock_llm.error_body(kind, 400, "mock echo-headers:\n" + lines)))
    out.append("redirecting to http://127.0.0.1:1/elsewhere\n")
    out.append("<html><body>Bad gateway page</body></html>")
    out.append('{"message": "a plain message"}')
    return out


def header_seeds():
    h = "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
    return [h + "Retry-After: 1\r\n\r\n",
            h + "Retry-After: 30\r\n\r\n",                     # fault 429-ra-30
            h + "Retry-After: 0\r\n\r\n",                      # flaky-N-429
            h + "retry-after-ms: 250.5\r\n\r\n",
            h + "Retry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\n" + h + "Retry-After: 2\r\n\r\n",
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\n\r\n"]


def rubric_seeds():
    return [json.dumps({"pass": True, "score": 0.9, "reason": "meets the rubric"}),
            json.dumps({"pass": False, "score": 0.2, "reason": "misses the rubric"}),
            json.dumps({"pass": False}),
            "[Mock:gpt-4o-mini] Generated response for prompt: Grade me: 1"]


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for s in dict.fromkeys(seeds):
        b = s.encode("utf-8")
        name = hashlib.sha1(b).hexdigest()[:12] + ".txt"
        with open(os.path.join(d, name), "wb") as f:
            f.write(b)
    print("%-14s %3d seeds" % (target, len(os.listdir(d))))


def main():
    write("template", template_seeds())
    write("openai", response_seeds("openai"))
    write("anthropic", response_seeds("anthropic"))
    write("error_summary", error_seeds())
    write("retry_after", header_seeds())
    write("rubric", rubric_seeds())


if __name__ == "__main__":
    main()
