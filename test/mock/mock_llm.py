#!/usr/bin/python3
"""mock_llm.py -- deterministic mock LLM provider for maester's tests.

Speaks realistic OpenAI Chat Completions and Anthropic Messages wire
formats, records every request, and injects faults on demand.  Standard
library only (Python >= 3.9).

Usage:
    python3 test/mock/mock_llm.py [--host 127.0.0.1] [--port 0]
        [--port-file PATH] [--api-key KEY] [--verbose]

  --port 0 (default) binds a free port; --port-file writes it (plus a
  newline) atomically once bound.  "mock_llm listening on http://H:P" is
  printed to stdout.  SIGTERM / SIGINT exit cleanly with status 0.

Endpoints (each also reachable under the keyless prefix /open):
    POST /v1/chat/completions, POST /chat/completions   OpenAI
    POST /v1/messages                                    Anthropic
    POST /openai/v1/chat/completions                     Azure OpenAI (v1 API; api-key header)
    POST /openai/deployments/D/chat/completions?api-version=V   Azure (model D)
    GET  /_mock/requests   last 1000 model-endpoint requests, oldest first
    POST /_mock/reset      clear requests, flaky counters, connection stats
    GET  /_mock/stats      {"requests", "embedding_inputs", "open_connections", "connections_total"}
    GET  /_mock/health     {"ok": true}
    POST /v1/traces        an OTLP/HTTP JSON collector: stores the spans it is sent
    GET  /_mock/traces     {"posts", "spans": [every span received, oldest first],
                            "rejected": [why], "headers": {of the last post}}
    POST /_mock/traces_fail/N   the next N posts to /v1/traces answer 503

Answers are deterministic: content is "[Mock:MODEL] Generated response for
prompt: PROMPT" ("[MockAnthropic:MODEL] ..." on /v1/messages), cut to
4*max_tokens chars (finish "length" / "max_tokens").  Input tokens =
ceil(len(system+prompt)/4)+3, output tokens = ceil(len(content)/4).
With tools (and tool_choice not none), the model calls the named tool, else
the first, with arguments made from its schema (schema_example), unless the
conversation ends with tool results: then content is "[Mock:MODEL] Tool
results: R1 | R2".  A json_schema response format (OpenAI response_format,
Anthropic output_config.format) answers a value made from the schema; JSON
mode without the word "json" in the messages is OpenAI's 400.  Conversations
are checked as the APIs check them (tool results answer the calls just
before them).
Headers x-mock-cached-tokens / x-mock-cache-write-tokens fake prompt caching;
so does the fault cached-R-W (R tokens read from the cache, W written).
The fault badutf8 answers with content that is not valid UTF-8; verdict-pass and
verdict-fail answer like an llm_rubric grader (verdict-pass-MS after MS ms).

Faults come from header "x-mock-fault: SPEC", else from a model named
"fault-SPEC".  SPECs: latency-MS, status-CODE, 429, 429-ra-SECONDS,
flaky-N-CODE, usage-N, bigheader-BYTES, hang, malformed, nousage, missingfields, wrongtype,
huge[-BYTES], drip[-MS], reset, echo-headers, echo-key, redirect,
xretry-(true|false)-CODE, raorder-N, quota, shape-NAME
(answers the SDK types allow: toolcalls, badargs, length, filter, parts, refusal, details,
nochoices, tooluse, anthrefusal; and impossible usage: overcached,
negative; see _shape).  See FAULTS below.
The fault echo-key answers 400 with the key it was sent, transformed: cut by
its last character (cut), without its first (tail), its first half (half),
base64'd alone (b64), after "Bearer " (b64bearer), after "user:" (b64basic),
URL-safe (b64url), and percent-encoded (pct, pctlower); echo-key-FORM echoes
one of them.

With --api-key KEY, model endpoints outside /open require
"Authorization: Bearer KEY" (OpenAI) or "x-api-key: KEY" (Anthropic).
"""

import argparse
import base64
import collections
import hashlib
import json
import math
import os
import re
import select
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_PATHS = {
    "/v1/chat/completions": "openai",
    "/chat/completions": "openai",
    "/v1/embeddings": "embeddings",
    "/embeddings": "embeddings",
    "/openai/v1/embeddings": "azure-embeddings",
    "/v1/messages": "anthropic",
    "/openai/v1/chat/completions": "azure",        # Azure OpenAI's v1 API
}
AZURE_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|embeddings)")
NOT_FOUND = {"error": {"message": "not found", "type": "invalid_request_error"}}
HUGE_DEFAULT = 20_000_000
HANG_LIMIT_S = 300.0
IDLE_TIMEOUT_S = 600          # idle keep-alive connections are dropped after this

# Fault grammar: fullmatch regex -> fault name.  Groups carry the parameters.
FAULTS = [
    (re.compile(r"latency-(\d+)"), "latency"),
    (re.compile(r"status-([1-5]\d\d)"), "status"),
    (re.compile(r"429(?:-ra-(\d+(?:\.\d+)?))?"), "429"),
    (re.compile(r"flaky-(\d+)-([1-5]\d\d)"), "flaky"),
    (re.compile(r"huge(?:-(\d+))?"), "huge"),
    (re.compile(r"drip(?:-(\d+))?"), "drip"),
    (re.compile(r"cached-(\d+)-(\d+)"), "cached"),
    (re.compile(r"usage-(\d+)"), "usage"),
    (re.compile(r"bigheader-(\d+)"), "bigheader"),
    (re.compile(r"xretry-(true|false)-([1-5]\d\d)"), "xretry"),
    (re.compile(r"raorder-(\d+)"), "raorder"),
    (re.compile(r"(quota)"), "quota"),
    (re.compile(r"embeddim-(\d+)"), "embeddim"),
    (re.compile(r"embedbad-(nested|object|tiny|hugetokens)"), "embedbad"),
    (re.compile(r"shape-(toolcalls|badargs|length|filter|parts|refusal|nochoices|tooluse|anthrefusal|overcached|negative|details)"), "shape"),
    (re.compile(r"verdict-(pass|fail)(?:-(\d+))?"), "verdict"),
    (re.compile(r"(hang|malformed|nousage|missingfields|wrongtype|reset|"
                r"echo-headers|redirect|badutf8)"), "simple"),
]

# Provider error "type" per HTTP status.
OPENAI_ETYPE = {400: "invalid_request_error", 401: "invalid_request_error",
                403: "invalid_request_error", 404: "invalid_request_error",
                422: "invalid_request_error", 429: "requests"}
ANTHROPIC_ETYPE = {400: "invalid_request_error", 401: "authentication_error",
                   403: "permission_error", 404: "not_found_error",
                   413: "request_too_large", 429: "rate_limit_error",
                   529: "overloaded_error"}


class ClientError(Exception):
    """A 400-class problem with the request: (status, message)."""


def error_body(kind, status, message, code=None):
    """Provider-shaped JSON error document (as a dict)."""
    if kind == "anthropic":
        etype = ANTHROPIC_ETYPE.get(status,
                                    "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": etype, "message": message}}
    etype = OPENAI_ETYPE.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


ECHO_KEY = re.compile(r"echo-key(?:-([a-z0-9]+))?")


def echo_key_forms(headers, only=None):
    """The key a request carried, in the forms a careless server echoes it
    (all of them, or the one named `only`)."""
    key = headers.get("x-api-key") or (headers.get("Authorization") or "")
    key = key[len("Bearer "):] if key.startswith("Bearer ") else key
    raw = key.encode()
    forms = [("cut", key[:-1]), ("tail", key[1:]), ("half", key[:len(key) // 2]),
             ("b64", base64.b64encode(raw).decode()),
             ("b64bearer", base64.b64encode(b"Bearer " + raw).decode()),
             ("b64basic", base64.b64encode(b"user:" + raw).decode()),
             ("b64url", base64.urlsafe_b64encode(b"~~" + raw).decode().rstrip("=")),
             ("pct", "".join("%%%02X" % b for b in raw)),
             ("pctlower", "".join("%%%02x" % b for b in raw))]
    return " ".join("%s=%s" % f for f in forms if only is None or f[0] == only)


def text_of(content):
    """Message content as text: a string, or the text blocks of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content
                       if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def ceil4(n):
    return (n + 3) // 4


def schema_example(schema, depth=0):
    """A value the JSON schema accepts (deterministic): what a model told to
    follow the schema (strict structured output, a forced tool) answers."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t == "object" or (t is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {k: schema_example(v, depth + 1) for k, v in props.items()}
    if t == "array":
        return [schema_example(schema.get("items") or {"type": "string"}, depth + 1)]
    if t == "string":
        return "mock"
    if t == "integer":
        return int(schema.get("minimum", 1))
    if t == "number":
        return schema.get("minimum", 1.5)
    if t == "boolean":
        return True
    return None


def check_openai_messages(msgs):
    """ChatCompletionMessageParam[] (npm openai 6.49.0, completions.d.ts 1379):
    tool messages answer the tool_calls of the assistant message before them,
    and every call is answered before the conversation goes on (the API's
    400 otherwise)."""
    pending = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ClientError("messages[%d]: must be an object" % i)
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise ClientError("messages[%d].role: invalid value %r" % (i, role))
        content = m.get("content")
        if role == "tool":
            tid = m.get("tool_call_id")
            if not isinstance(tid, str):
                raise ClientError("messages[%d].tool_call_id: field required" % i)
            if tid not in pending:
                raise ClientError("Invalid parameter: messages with role 'tool' must be a response "
                                  "to a preceeding message with 'tool_calls'.")
            pending.remove(tid)
        elif pending:
            raise ClientError("An assistant message with 'tool_calls' must be followed by tool "
                              "messages responding to each 'tool_call_id'. The following "
                              "tool_call_ids did not have response messages: %s" % ", ".join(pending))
        if role == "assistant":
            calls = m.get("tool_calls")
            if calls is not None:
                if not isinstance(calls, list):
                    raise ClientError("messages[%d].tool_calls: must be an array" % i)
                for c in calls:
                    fn = c.get("function") if isinstance(c, dict) else None
                    if (c.get("type") != "function" or not isinstance(c.get("id"), str)
                            or not isinstance(fn, dict) or not isinstance(fn.get("name"), str)
                            or not isinstance(fn.get("arguments"), str)):
                        raise ClientError("messages[%d].tool_calls: each is {id, type: 'function', "
                                          "function: {name, arguments: string}}" % i)
                    pending.append(c["id"])
            if content is None and not calls:
                raise ClientError("messages[%d]: assistant content is required without tool_calls" % i)
        elif not isinstance(content, (str, list)):
            raise ClientError("messages[%d].content: must be a string or an array" % i)
    return pending


def check_anthropic_messages(msgs):
    """MessageParam[] (@anthropic-ai/sdk 1.16.0, messages.d.ts 3922): a
    tool_result must answer a tool_use of the assistant turn just before it
    (the API's 400 otherwise)."""
    last_uses = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ClientError("messages.%d: must be an object" % i)
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant", "system"):
            raise ClientError("messages.%d.role: Input should be 'user' or 'assistant'" % i)
        if not isinstance(content, (str, list)):
            raise ClientError("messages.%d.content: Input should be a valid list or string" % i)
        blocks = content if isinstance(content, list) else []
        uses = []
        for b in blocks:
            if not isinstance(b, dict) or not isinstance(b.get("type"), str):
                raise ClientError("messages.%d.content: each block is an object with a type" % i)
            if b["type"] == "text" and not isinstance(b.get("text"), str):
                raise ClientError("messages.%d.content: text blocks need a text" % i)
            if b["type"] == "text" and b["text"] == "":
                raise ClientError("messages: text content blocks must be non-empty")
            if b["type"] == "tool_use":
                if role != "assistant" or not isinstance(b.get("id"), str) \
                        or not isinstance(b.get("name"), str) or not isinstance(b.get("input"), dict):
                    raise ClientError("messages.%d: tool_use blocks are {id, name, input: object} "
                                      "in assistant turns" % i)
                uses.append(b["id"])
            if b["type"] == "tool_result":
                if role != "user" or b.get("tool_use_id") not in last_uses:
                    raise ClientError("messages.%d.content: unexpected `tool_use_id` found in "
                                      "`tool_result` blocks: %s. Each `tool_result` block must have "
                                      "a corresponding `tool_use` block in the previous message."
                                      % (i, b.get("tool_use_id")))
        last_uses = uses
    return last_uses


def check_tools(kind, req):
    """tools and tool_choice as the SDK types have them; the tools (as
    (name, schema)) and the one the model must call, if any."""
    tools, forced = [], None
    raw = req.get("tools")
    if raw is not None:
        if not isinstance(raw, list):
            raise ClientError("tools: must be an array")
        for t in raw:
            if kind == "anthropic":
                # Tool (messages.d.ts 4417): name, input_schema {type: 'object'}
                if not isinstance(t, dict) or not isinstance(t.get("name"), str) \
                        or not isinstance(t.get("input_schema"), dict) \
                        or t["input_schema"].get("type") != "object":
                    raise ClientError("tools: each is {name, input_schema: {type: 'object', ...}}")
                tools.append((t["name"], t["input_schema"]))
            else:
                # ChatCompletionFunctionTool (completions.d.ts 1208)
                fn = t.get("function") if isinstance(t, dict) else None
                if t.get("type") != "function" or not isinstance(fn, dict) \
                        or not isinstance(fn.get("name"), str):
                    raise ClientError("tools: each is {type: 'function', function: {name, ...}}")
                tools.append((fn["name"], fn.get("parameters") or {"type": "object"}))
    choice = req.get("tool_choice")
    names = [n for n, _ in tools]
    if choice is not None:
        if not tools:
            raise ClientError("tool_choice: only allowed when tools are specified")
        if kind == "anthropic":
            if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
                raise ClientError("tool_choice: {type: auto | any | tool | none}")
            if choice["type"] == "tool":
                if choice.get("name") not in names:
                    raise ClientError("tool_choice: tool %r not found in tools" % choice.get("name"))
                forced = choice["name"]
            elif choice["type"] == "none":
                return tools, None, False
        else:
            if isinstance(choice, dict):
                fn = choice.get("function")
                if choice.get("type") != "function" or not isinstance(fn, dict) \
                        or fn.get("name") not in names:
                    raise ClientError("tool_choice: {type: 'function', function: {name}} of a tool")
                forced = fn["name"]
            elif choice not in ("none", "auto", "required"):
                raise ClientError("tool_choice: invalid value %r" % choice)
            elif choice == "none":
                return tools, None, False
    return tools, forced, bool(tools)


WORD = re.compile(r"[a-z0-9]+")


def feature_vector(text, dims):
    """Signed feature hashing of the text's lower-cased words into dims
    dimensions, L2-normalised: texts sharing words point the same way, so
    retrieval over mock embeddings means something."""
    # sparse: a text has few words, so only their dimensions are computed
    # (the mock must not be what a throughput benchmark measures)
    hits = {}
    for w in WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        hits[h % dims] = hits.get(h % dims, 0.0) + (1.0 if (h >> 32) & 1 else -1.0)
    n = math.sqrt(sum(x * x for x in hits.values()))
    v = [0] * dims
    if n == 0:
        v[0] = 1
        return v
    for i, x in hits.items():
        v[i] = round(x / n, 6)
    return v


class EmbedAnswer:
    """An embeddings answer (npm openai, resources/embeddings.d.ts:
    CreateEmbeddingResponse {object: 'list', data: Embedding[] {embedding:
    number[], index, object: 'embedding'}, model, usage {prompt_tokens,
    total_tokens}}).  The request is checked as EmbeddingCreateParams: input
    a string or an array of (at most 2,048, non-empty) strings; dimensions
    1536 (3072 for *-large) unless asked.  A model named "...-ctx-N" takes at
    most N tokens an input (more is the API's 400, naming the limit)."""

    def __init__(self, req):
        if not isinstance(req, dict):
            raise ClientError("request body must be a JSON object")
        model, inp = req.get("model"), req.get("input")
        if not isinstance(model, str) or not model:
            raise ClientError("model: field required")
        if isinstance(inp, str):
            inp = [inp]
        if not isinstance(inp, list) or not inp or len(inp) > 2048 \
                or not all(isinstance(x, str) for x in inp):
            raise ClientError("'$.input' is invalid. Please check the API reference: "
                              "https://platform.openai.com/docs/api-reference.")
        if any(x == "" for x in inp):
            raise ClientError("'$.input' is invalid: an input cannot be an empty string.")
        dims = req.get("dimensions")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
            raise ClientError("dimensions must be a positive integer")
        if req.get("encoding_format", "float") not in ("float", "base64"):
            raise ClientError("encoding_format must be float or base64")
        if req.get("encoding_format") == "base64":
            raise ClientError("the mock answers floats only (encoding_format float)")
        m = re.search(r"-ctx-(\d+)$", model)
        for x in inp:
            if m and ceil4(len(x)) > int(m.group(1)):
                raise ClientError("This model's maximum context length is %s tokens, however you "
                                  "requested %d tokens (%d in your prompt; 0 for the completion). "
                                  "Please reduce your prompt; or completion length."
                                  % (m.group(1), ceil4(len(x)), ceil4(len(x))))
        self.kind, self.model, self.inputs = "openai", model, inp
        self.dims = dims or (3072 if model.endswith("-large") else 1536)
        self.input_tokens = sum(max(1, ceil4(len(x))) for x in inp)

    def render(self, content=None, out_tokens=None, usage=True):
        doc = {"object": "list", "model": self.model,
               "data": [{"object": "embedding", "index": i,
                         "embedding": feature_vector(x, self.dims)}
                        for i, x in enumerate(self.inputs)],
               "usage": {"prompt_tokens": self.input_tokens, "total_tokens": self.input_tokens}}
        if not usage:
            del doc["usage"]
        return doc


def cited_answer(prompt, invent):
    """A grounded answer to maester.ask's prompt ("[n] title\ncontent" sources
    then "Question: ..."): the first sentence of each of the first three
    sources, each followed by its [n]; with invent, one more sentence citing
    a source that is not there."""
    out = []
    for m in re.finditer(r"^\[(\d+)\] [^\n]*\n(.+?)(?=\n\n\[\d+\] |\n\nQuestion: |\Z)", prompt, re.S | re.M):
        text = " ".join(m.group(2).replace("#", " ").split())
        first = re.split(r"(?<=[.!?])\s", text, 1)[0].rstrip(".!?")
        out.append("%s [%s]." % (first[:300], m.group(1)))
        if len(out) == 3:
            break
    if not out:
        return "The sources do not answer the question."
    if invent:
        out.append("It is also documented elsewhere [%d]." % (len(out) + 40))
    return " ".join(out)


class Answer:
    """Everything needed to render a normal (deterministic) answer."""

    def __init__(self, kind, req, headers):
        if not isinstance(req, dict):
            raise ClientError("request body must be a JSON object")
        model = req.get("model")
        if not isinstance(model, str) or not model:
            raise ClientError("model: field required")
        msgs = req.get("messages")
        if not isinstance(msgs, list):
            raise ClientError("messages: field required (array)")
        if req.get("stream") is True:
            raise ClientError("stream=true is not supported by the mock")
        system = []
        if kind == "anthropic":
            system.append(text_of(req.get("system")))
            limit = req.get("max_tokens")
            if limit is None:
                raise ClientError("max_tokens: Field required")
            check_anthropic_messages(msgs)
        else:
            limit = req.get("max_completion_tokens", req.get("max_tokens"))
            check_openai_messages(msgs)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise ClientError("max_tokens must be a positive integer")
        tools, forced, may_call = check_tools(kind, req)
        prompt, others, results = [], [], []
        for m in msgs:
            role, content = m.get("role"), m.get("content")
            if role != "tool":
                results = []    # the results of the last round only
            if role == "user":
                prompt.append(text_of(content))
                if isinstance(content, list):
                    results = [text_of(b.get("content")) if isinstance(b.get("content"), (str, list))
                               else "" for b in content if b.get("type") == "tool_result"]
            elif role in ("system", "developer"):
                system.append(text_of(content))
            else:
                others.append(text_of(content) if content is not None else "")
                if role == "tool":
                    results.append(text_of(content))
                for c in (m.get("tool_calls") or []):
                    others.append(c["function"]["name"] + c["function"]["arguments"])
                if isinstance(content, list):
                    others.extend(b["name"] + json.dumps(b["input"]) for b in content
                                  if b.get("type") == "tool_use")
        last = msgs[-1] if msgs else {}
        answered = last.get("role") == "tool" or (
            isinstance(last.get("content"), list)
            and any(b.get("type") == "tool_result" for b in last["content"]))
        if not answered:
            results = []
        self.kind, self.model = kind, model
        prompt_text, system_text = "".join(prompt), "".join(system)

        # what the answer is: a tool call, a schema's value, JSON, or text
        self.tool_call = None
        rf = req.get("response_format")
        schema = None
        if kind == "openai" and isinstance(rf, dict) and rf.get("type") == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("name"), str):
                raise ClientError("response_format.json_schema.name: field required")
            schema = js.get("schema") or {}
        oc = req.get("output_config")
        if kind == "anthropic" and isinstance(oc, dict) and isinstance(oc.get("format"), dict):
            fmt = oc["format"]
            if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
                raise ClientError("output_config.format: {type: 'json_schema', schema}")
            schema = fmt["schema"]
        if forced or (may_call and not answered):
            name = forced or tools[0][0]
            self.tool_call = (name, schema_example(dict(tools)[name]) or {})
            content = ""
        elif results:
            tag = "MockAnthropic" if kind == "anthropic" else "Mock"
            content = "[%s:%s] Tool results: %s" % (tag, model, " | ".join(results))
        elif schema is not None:
            content = json.dumps(schema_example(schema))
        elif kind == "openai" and isinstance(rf, dict) and rf.get("type") == "json_object":
            if not any("json" in text_of(m.get("content") or "").lower() for m in msgs):
                raise ClientError("'messages' must contain the word 'json' in some form, to use "
                                  "'response_format' of type 'json_object'.")
            content = json.dumps({"model": model, "summary": prompt_text[:80]})
        elif isinstance(model, str) and model.startswith("mock-cite"):
            content = cited_answer(prompt_text, model == "mock-cite-invent")
        else:
            tag = "MockAnthropic" if kind == "anthropic" else "Mock"
            content = "[%s:%s] Generated response for prompt: %s" % (tag, model, prompt_text)
        self.truncated = limit is not None and len(content) > 4 * limit
        self.content = content[:4 * limit] if self.truncated else content
        extra = "".join(others) + (json.dumps(req.get("tools")) if tools else "")
        self.input_tokens = max(1, ceil4(len(system_text) + len(prompt_text) + len(extra)) + 3)
        self.cache_read = self._hdr_int(headers, "x-mock-cached-tokens")
        self.cache_write = self._hdr_int(headers, "x-mock-cache-write-tokens")
        self.cache_write_1h = 0

    def prompt_cache(self, req, state):
        """Anthropic's prompt cache: the prompt up to the last block marked
        with cache_control (CacheControlEphemeral {type: 'ephemeral', ttl?:
        '5m' | '1h'}) is written on first sight and read after (per model;
        no expiry).  Usage says so as the SDK's Usage does: cache reads and
        writes apart from input_tokens, the writes by ttl in cache_creation."""
        if self.cache_read or self.cache_write:
            return                      # the headers say what to report
        blocks = []
        sysv = req.get("system")
        for b in (sysv if isinstance(sysv, list) else [{"type": "text", "text": sysv or ""}]):
            blocks.append(b)
        for m in req.get("messages", []):
            c = m.get("content")
            for b in (c if isinstance(c, list) else [{"type": "text", "text": c}]):
                blocks.append(dict(b, role=m.get("role")))
        marked = [i for i, b in enumerate(blocks) if isinstance(b, dict) and "cache_control" in b]
        if not marked:
            return
        for i in marked:
            cc = blocks[i]["cache_control"]
            if not isinstance(cc, dict) or cc.get("type") != "ephemeral" \
                    or cc.get("ttl", "5m") not in ("5m", "1h"):
                raise ClientError("cache_control: {type: 'ephemeral', ttl?: '5m' | '1h'}")
        last = marked[-1]
        prefix = json.dumps([self.model] + [{k: v for k, v in b.items() if k != "cache_control"}
                                            for b in blocks[:last + 1]], sort_keys=True)
        tokens = min(max(1, ceil4(len(json.dumps(blocks[:last + 1])))), self.input_tokens)
        with state.lock:
            seen = prefix in state.prompt_cache
            state.prompt_cache[prefix] = True
        if seen:
            self.cache_read = tokens
        else:
            self.cache_write = tokens
            if blocks[last]["cache_control"].get("ttl") == "1h":
                self.cache_write_1h = tokens

    @staticmethod
    def _hdr_int(headers, name):
        v = headers.get(name)
        if v is None:
            return 0
        try:
            n = int(v.strip())
        except ValueError:
            n = -1
        if n < 0:
            raise ClientError("bad %s header: %r" % (name, v))
        return n

    def render(self, content=None, out_tokens=None, usage=True):
        """The response document as a dict (content/out_tokens overridable)."""
        content = self.content if content is None else content
        ct = out_tokens if out_tokens is not None else max(1, ceil4(len(content)))
        if self.tool_call and content == self.content:
            ct = out_tokens if out_tokens is not None else \
                max(1, ceil4(len(json.dumps(self.tool_call[1]))))
        if self.kind == "anthropic":
            blocks = [{"type": "text", "text": content, "citations": None}]
            stop = "max_tokens" if self.truncated else "end_turn"
            if self.tool_call and content == self.content:
                # ToolUseBlock (messages.d.ts 4767): input is an object
                blocks = [{"type": "tool_use", "id": "toolu_" + os.urandom(12).hex(),
                           "caller": {"type": "direct"},
                           "name": self.tool_call[0], "input": self.tool_call[1]}]
                stop = "tool_use"
            doc = {"id": "msg_" + os.urandom(12).hex(), "type": "message",
                   "role": "assistant", "model": self.model,
                   "content": blocks,
                   "stop_reason": stop,
                   "stop_sequence": None,
                   "usage": {"input_tokens": max(self.input_tokens - self.cache_read
                                                 - self.cache_write, 0),
                             "output_tokens": ct,
                             "cache_creation_input_tokens": self.cache_write,
                             "cache_read_input_tokens": self.cache_read,
                             "cache_creation": {
                                 "ephemeral_1h_input_tokens": self.cache_write_1h,
                                 "ephemeral_5m_input_tokens": self.cache_write - self.cache_write_1h},
                             "inference_geo": None, "output_tokens_details": None,
                             "server_tool_use": None, "service_tier": "standard",
                             "speed": None}}
        else:
            pt = max(self.input_tokens, self.cache_read)
            message = {"role": "assistant", "content": content, "refusal": None}
            finish = "length" if self.truncated else "stop"
            if self.tool_call and content == self.content:
                # ChatCompletionMessageFunctionToolCall (completions.d.ts 1342):
                # content null, arguments a string of JSON
                message["content"] = None
                message["tool_calls"] = [{"id": "call_" + os.urandom(12).hex(), "type": "function",
                                          "function": {"name": self.tool_call[0],
                                                       "arguments": json.dumps(self.tool_call[1])}}]
                finish = "tool_calls"
            doc = {"id": "chatcmpl-" + os.urandom(12).hex(), "object": "chat.completion",
                   "created": int(time.time()), "model": self.model,
                   "choices": [{"index": 0,
                                "message": message,
                                "logprobs": None,
                                "finish_reason": finish}],
                   "usage": {"prompt_tokens": pt, "completion_tokens": ct,
                             "total_tokens": pt + ct,
                             "prompt_tokens_details": {"cached_tokens": self.cache_read,
                                                       "audio_tokens": 0},
                             "completion_tokens_details": {
                                 "reasoning_tokens": 0, "audio_tokens": 0,
                                 "accepted_prediction_tokens": 0,
                                 "rejected_prediction_tokens": 0}},
                   "system_fingerprint": "fp_mock"}
        if not usage:
            del doc["usage"]
        return doc


HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")
DIGITS = re.compile(r"[0-9]{1,20}")
OTLP_VALUE_KINDS = {"stringValue": str, "boolValue": bool, "intValue": (str, int),
                    "doubleValue": (int, float)}


def otlp_span_problem(sp):
    """What is wrong with one OTLP/JSON span, or None (the collector's checks)."""
    if not HEX32.fullmatch(sp.get("traceId", "")):
        return "traceId must be 32 lowercase hex digits"
    if not HEX16.fullmatch(sp.get("spanId", "")):
        return "spanId must be 16 lowercase hex digits"
    parent = sp.get("parentSpanId", "")
    if parent and not HEX16.fullmatch(parent):
        return "parentSpanId must be empty or 16 lowercase hex digits"
    if not isinstance(sp.get("name"), str) or not sp["name"]:
        return "name must be a non-empty string"
    start, end = sp.get("startTimeUnixNano"), sp.get("endTimeUnixNano")
    if not (isinstance(start, str) and isinstance(end, str)
            and DIGITS.fullmatch(start) and DIGITS.fullmatch(end)):
        return "times must be unix nanoseconds as decimal strings"
    if int(end) < int(start) or int(start) < 10 ** 18:
        return "times out of range"
    if sp.get("kind") not in (1, 2, 3, 4, 5):
        return "kind must be a SpanKind 1..5"
    if not isinstance(sp.get("status"), dict) or sp["status"].get("code") not in (0, 1, 2):
        return "status.code must be 0, 1 or 2"
    for a in sp.get("attributes", []):
        v = a.get("value")
        if not isinstance(a.get("key"), str) or not isinstance(v, dict) or len(v) != 1:
            return "an attribute needs a key and exactly one value"
        (kind, val), = v.items()
        if kind not in OTLP_VALUE_KINDS or not isinstance(val, OTLP_VALUE_KINDS[kind]):
            return "attribute %s: bad value %r" % (a["key"], v)
        if kind == "intValue" and isinstance(val, str) and not re.fullmatch(r"-?[0-9]+", val):
            return "attribute %s: intValue must be an integer" % a["key"]
    return None


class State:
    """Shared, lock-protected test-visible state."""

    def __init__(self):
        self.lock = threading.Lock()
        self.open_connections = 0
        self.reset()

    def reset(self):
        self.seq = 0                                   # model requests since reset
        self.embedding_inputs = 0                      # inputs sent to the embeddings endpoints
        self.requests = collections.deque(maxlen=1000)
        self.attempts = {}                             # (x-request-id, spec) -> count
        self.connections_total = 0
        self.trace_posts = 0                           # posts to /v1/traces
        self.trace_spans = []                          # spans received
        self.trace_fail = 0                            # posts still to refuse
        self.trace_rejected = []                       # why malformed posts were refused
        self.trace_headers = {}                        # headers of the last post
        self.prompt_cache = {}                         # Anthropic cache prefixes seen


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock_llm/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("mock_llm: %s %s\n" % (self.address_string(), fmt % args))

    # every method goes through one dispatcher
    def do_POST(self):
        try:
            self._dispatch()
        except (ConnectionError, TimeoutError):
            self.close_connection = True       # client went away: stay quiet

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_POST

    # ---- plumbing -------------------------------------------------------

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:                  # skip trailers up to the blank line
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(n) if n else b""

    def _head(self, status, ctype, length, extra=()):
        """Queue status line and headers (sent with the next flush)."""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        # the providers' request ids: OpenAI x-request-id, Anthropic request-id
        rid = "req_" + os.urandom(8).hex()
        self.send_header("request-id" if self.path.endswith("/messages") else "x-request-id", rid)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for k, v in extra:
            self.send_header(k, v)
        self._headers_buffer.append(b"\r\n")

    def _send(self, status, body, ctype="application/json", extra=()):
        """Headers and body in a single write (one segment for small answers)."""
        self._head(status, ctype, len(body), extra)
        self._headers_buffer.append(body)
        self.flush_headers()

    def _json(self, status, doc, extra=()):
        self._send(status, json.dumps(doc).encode(), extra=extra)

    def _error(self, kind, status, message, code=None, extra=()):
        self._json(status, error_body(kind, status, message, code), extra)

    # ---- routing --------------------------------------------------------

    def _dispatch(self):
        path = self.path.split("?", 1)[0]
        keyless = path == "/open" or path.startswith("/open/")
        if keyless:
            path = path[5:] or "/"
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            return self._json(400, {"error": {"message": "bad request body framing",
                                              "type": "invalid_request_error"}})
        if path.startswith("/_mock/"):
            return self._control(path)
        if path == "/v1/traces":
            return self._traces(body)
        kind = MODEL_PATHS.get(path)
        deployment = None
        m = AZURE_DEPLOYMENT.fullmatch(path)
        if m:
            # Azure OpenAI's deployment URL: the api-version is required
            query = urllib.parse.parse_qs(self.path.split("?", 1)[1] if "?" in self.path else "")
            if not query.get("api-version"):
                return self._json(404, {"error": {"code": "404", "message": "Resource not found"}})
            kind = "azure" if m.group(2) == "chat/completions" else "azure-embeddings"
            deployment = urllib.parse.unquote(m.group(1))
        if kind is None:
            return self._json(404, NOT_FOUND)
        self._model(kind, keyless, body, deployment)

    def _control(self, path):
        st = self.server.state
        if path == "/_mock/requests":
            with st.lock:
                reqs = list(st.requests)
            return self._json(200, reqs)
        if path == "/_mock/reset":
            with st.lock:
                st.reset()
            return self._json(200, {"ok": True})
        if path == "/_mock/stats":
            with st.lock:
                doc = {"requests": st.seq, "embedding_inputs": st.embedding_inputs,
                       "open_connections": st.open_connections,
                       "connections_total": st.connections_total}
            return self._json(200, doc)
        if path == "/_mock/health":
            return self._json(200, {"ok": True})
        if path == "/_mock/traces":
            with st.lock:
                doc = {"posts": st.trace_posts, "spans": list(st.trace_spans),
                       "rejected": list(st.trace_rejected), "headers": dict(st.trace_headers)}
            return self._json(200, doc)
        if path.startswith("/_mock/traces_fail/"):
            with st.lock:
                st.trace_fail = int(path.rsplit("/", 1)[1])
            return self._json(200, {"ok": True})
        return self._json(404, NOT_FOUND)

    def _traces(self, body):
        """OTLP/HTTP JSON: ExportTraceServiceRequest in, an empty partial success out."""
        st = self.server.state
        if self.command != "POST":
            return self._json(405, {"code": 12, "message": "method not allowed"})
        if "json" not in self.headers.get("Content-Type", ""):
            return self._json(415, {"code": 3, "message": "only application/json"})
        try:
            doc = json.loads(body)
            spans = [sp for rs in doc["resourceSpans"] for ss in rs["scopeSpans"]
                     for sp in ss["spans"]]
            problem = next(filter(None, map(otlp_span_problem, spans)), None)
        except (ValueError, KeyError, TypeError, AttributeError):
            problem = "not an ExportTraceServiceRequest"
        if problem:
            with st.lock:
                st.trace_posts += 1
                st.trace_rejected.append(problem)
            return self._json(400, {"code": 3, "message": problem})
        with st.lock:
            st.trace_posts += 1
            st.trace_headers = {k.lower(): v for k, v in self.headers.items()}
            if st.trace_fail > 0:
                st.trace_fail -= 1
                return self._json(503, {"code": 14, "message": "collector unavailable"},
                                  extra=(("Retry-After", "0"),))
            st.trace_spans.extend(spans)
        return self._json(200, {})

    def _model(self, kind, keyless, body, deployment=None):
        st, hdrs = self.server.state, self.headers
        try:
            req, parsed = (json.loads(body), True) if body else (None, False)
        except ValueError:
            req, parsed = None, False
        azure = kind in ("azure", "azure-embeddings")
        embeddings = kind in ("embeddings", "azure-embeddings")
        if azure or embeddings:
            kind = "openai"             # Azure speaks OpenAI's wire format
            if deployment is not None and isinstance(req, dict):
                req["model"] = deployment   # the deployment names the model
        model = req.get("model") if isinstance(req, dict) else None
        spec = hdrs.get("x-mock-fault")
        if spec is None and isinstance(model, str) and model.startswith("fault-"):
            spec = model[len("fault-"):]

        # record (headers lower-cased; repeated headers joined with ", ")
        hmap = {}
        for k, v in hdrs.items():
            k = k.lower()
            hmap[k] = hmap[k] + ", " + v if k in hmap else v
        with st.lock:
            st.seq += 1
            if embeddings and parsed and isinstance(req, dict):
                inp = req.get("input")
                st.embedding_inputs += len(inp) if isinstance(inp, list) else 1
            st.requests.append({"seq": st.seq, "method": self.command, "path": self.path,
                                "headers": hmap,
                                "body": req if parsed else body.decode("utf-8", "replace"),
                                "raw": body.decode("utf-8", "replace"),
                                "fault": spec})

        if spec == "echo-headers":             # before auth, by design
            lines = "\n".join("%s: %s" % (k, v) for k, v in hdrs.items())
            return self._error(kind, 400, "mock echo-headers:\n" + lines)
        if spec is not None and ECHO_KEY.fullmatch(spec):  # before auth too: the key as sent
            return self._error(kind, 400, "mock echo-key: " +
                               echo_key_forms(hdrs, ECHO_KEY.fullmatch(spec).group(1)))

        key = self.server.api_key
        if key is not None and not keyless:
            if kind == "anthropic":
                ok = hdrs.get("x-api-key") == key
            elif azure:
                ok = hdrs.get("api-key") == key and hdrs.get("Authorization") is None
            else:
                ok = hdrs.get("Authorization") == "Bearer " + key
            if not ok:
                return self._error(kind, 401, "invalid api key", code="invalid_api_key")

        if self.command != "POST":
            return self._error(kind, 405, "method not allowed")
        if kind == "anthropic" and not hdrs.get("anthropic-version"):
            return self._error(kind, 400, "anthropic-version: header is required")
        if not parsed:
            return self._error(kind, 400, "request body is not valid JSON")
        try:
            if embeddings:
                ans = EmbedAnswer(req)
            else:
                ans = Answer(kind, req, hdrs)
            if kind == "anthropic":
                ans.prompt_cache(req, st)
        except ClientError as e:
            return self._error(kind, 400, str(e))
        if spec is None:
            return self._json(200, ans.render())
        self._fault(kind, spec, ans)

    # ---- faults ---------------------------------------------------------

    def _fault(self, kind, spec, ans):
        for rx, name in FAULTS:
            m = rx.fullmatch(spec)
            if m:
                break
        else:
            return self._error(kind, 400, 'unknown mock fault "%s"' % spec)
        arg = m.group(1)

        if name == "latency":
            time.sleep(int(arg) / 1000.0)
            return self._json(200, ans.render())
        if name == "status":
            return self._error(kind, int(arg), "mock error %s" % arg)
        if name == "429":
            return self._error(kind, 429, "mock rate limit exceeded",
                               code=None if kind == "anthropic" else "rate_limit_exceeded",
                               extra=[("Retry-After", arg or "1")])
        if name == "flaky":
            st = self.server.state
            k = (self.headers.get("x-request-id"), spec)
            with st.lock:
                n = st.attempts[k] = st.attempts.get(k, 0) + 1
            code = int(m.group(2))
            if n <= int(arg):
                extra = [("Retry-After", "0")] if code == 429 else []
                return self._error(kind, code, "mock flaky error %d (attempt %d)" % (code, n),
                                   extra=extra)
            return self._json(200, ans.render())
        if name == "cached":
            # prompt caching as the headers would fake it: R tokens read, W written
            ans.cache_read, ans.cache_write = int(arg), int(m.group(2))
            ans.input_tokens = max(ans.input_tokens, ans.cache_read + ans.cache_write)
            return self._json(200, ans.render())
        if name == "usage":
            # a provider reporting N output tokens (a lying or broken one)
            return self._json(200, ans.render(out_tokens=int(arg)))
        if name == "xretry":
            # an error carrying the SDKs' x-should-retry override
            return self._error(kind, int(m.group(2)), "mock error with x-should-retry: " + arg,
                               extra=[("x-should-retry", arg)])
        if name == "raorder":
            # N 429s giving Retry-After (an hour) before Retry-After-Ms (5 ms):
            # the SDKs take retry-after-ms whatever the order; then success
            st = self.server.state
            k = (self.headers.get("x-request-id"), spec)
            with st.lock:
                n = st.attempts[k] = st.attempts.get(k, 0) + 1
            if n <= int(arg):
                return self._error(kind, 429, "mock rate limit (attempt %d)" % n,
                                   code=None if kind == "anthropic" else "rate_limit_exceeded",
                                   extra=[("Retry-After", "3600"), ("Retry-After-Ms", "5")])
            return self._json(200, ans.render())
        if name == "quota":
            # OpenAI's exhausted quota: a 429 no retry cures (APIError code)
            return self._json(429, {"error": {
                "message": "You exceeded your current quota, please check your plan and billing details.",
                "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}})
        if name == "shape":
            return self._json(200, self._shape(kind, arg, ans))
        if name == "embeddim":
            # embeddings of another length than the model's (a wrong deployment)
            ans.dims = int(arg)
            return self._json(200, ans.render())
        if name == "embedbad":
            # answers the SDK's types do not allow (found by fuzzing the parser),
            # and one they do: a value too small for a float (its 0)
            doc = ans.render()
            if arg == "nested":
                doc["data"][0]["embedding"][1] = [9, 9]
            elif arg == "object":
                doc["data"] = {"first": doc["data"][0]}
            elif arg == "tiny":
                doc["data"][0]["embedding"][0] = 1e-300
            elif arg == "hugetokens":
                doc["usage"]["prompt_tokens"] = 9223372036854775807
            return self._json(200, doc)
        if name == "bigheader":
            # a normal answer behind one response header of N bytes
            return self._send(200, json.dumps(ans.render()).encode(),
                              extra=[("X-Mock-Padding", "x" * int(arg))])
        if name == "verdict":
            # a grader's answer, for llm_rubric tests (after MS ms, if given)
            if m.group(2):
                time.sleep(int(m.group(2)) / 1000.0)
            ok = arg == "pass"
            verdict = json.dumps({"pass": ok, "score": 0.9 if ok else 0.2,
                                  "reason": "meets the rubric" if ok else "misses the rubric"})
            return self._json(200, ans.render(content=verdict))
        if name == "huge":
            return self._huge(ans, int(arg) if arg else HUGE_DEFAULT)
        if name == "drip":
            return self._drip(ans, int(arg) if arg else 100)

        # simple, parameterless faults
        if arg == "hang":
            return self._hang()
        if arg == "reset":
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.rfile.close()                 # drop the makefile() ref so close() is real
            self.connection.close()            # -> RST, no response
            return None
        if arg == "malformed":
            return self._send(200, b'{"id": "x", "choices": [')
        if arg == "badutf8":
            # a normal answer whose content holds bytes that are not UTF-8
            body = json.dumps(ans.render(content="ok MARK bad")).encode()
            return self._send(200, body.replace(b"MARK", b"\xff\xfe"))
        if arg == "nousage":
            return self._json(200, ans.render(usage=False))
        if arg == "missingfields":
            if kind == "anthropic":
                doc = {"id": "msg_x", "type": "message", "model": ans.model}
            else:
                doc = {"id": "chatcmpl-x", "object": "chat.completion", "model": ans.model}
            return self._json(200, doc)
        if arg == "wrongtype":
            return self._send(200, b"<html><body>Bad gateway page</body></html>",
                              ctype="text/html")
        if arg == "redirect":
            return self._send(302, b"redirecting to http://127.0.0.1:1/elsewhere\n",
                              ctype="text/plain",
                              extra=[("Location", "http://127.0.0.1:1/elsewhere")])
        raise AssertionError(arg)

    @staticmethod
    def _shape(kind, arg, ans):
        """Real answers the SDK types allow and a gateway may mishandle.

        OpenAI (npm openai, resources/chat/completions): ChatCompletionMessage
        has content: string | null and refusal: string | null; content is
        null beside tool_calls, and may be null with finish_reason length or
        content_filter; ChatCompletion.Choice.finish_reason is 'stop' |
        'length' | 'tool_calls' | 'content_filter' | 'function_call'.
        Anthropic (@anthropic-ai/sdk, resources/messages): Message.content is
        ContentBlock[] (ToolUseBlock {type, id, name, input} among them) and
        stop_reason includes 'tool_use' and 'refusal'.  Usage is always
        reported (1000 in, 200 out), so each answer is billed.
        """
        doc = ans.render(out_tokens=200)
        if kind == "anthropic":
            doc["usage"]["input_tokens"] = 1000
            if arg == "tooluse":
                doc["content"] = [{"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                                   "input": {"city": "Paris"}}]
                doc["stop_reason"] = "tool_use"
            elif arg == "anthrefusal":
                doc["content"] = []
                doc["stop_reason"] = "refusal"
                # RefusalStopDetails (messages.d.ts 4069)
                doc["stop_details"] = {"type": "refusal", "category": "general_harms",
                                       "explanation": "The request was declined."}
            elif arg == "nochoices":
                del doc["content"]
            elif arg == "details":
                # Usage (messages.d.ts 4807): writes by ttl, thinking tokens, tier
                doc["usage"].update({"cache_creation_input_tokens": 400, "cache_read_input_tokens": 50,
                                     "cache_creation": {"ephemeral_1h_input_tokens": 300,
                                                        "ephemeral_5m_input_tokens": 100},
                                     "output_tokens_details": {"thinking_tokens": 120},
                                     "service_tier": "priority"})
            return doc
        doc["usage"]["prompt_tokens"] = 1000
        doc["usage"]["total_tokens"] = 1200
        choice = doc["choices"][0]
        msg = choice["message"]
        if arg == "toolcalls":
            msg["content"] = None
            msg["tool_calls"] = [{"id": "call_1", "type": "function",
                                  "function": {"name": "get_weather",
                                               "arguments": "{\"city\": \"Paris\"}"}}]
            choice["finish_reason"] = "tool_calls"
        elif arg == "badargs":
            # "the model does not always generate valid JSON" (completions.d.ts 1360)
            msg["content"] = None
            msg["tool_calls"] = [{"id": "call_2", "type": "function",
                                  "function": {"name": "get_weather",
                                               "arguments": "{\"city\": \"Par"}}]
            choice["finish_reason"] = "tool_calls"
        elif arg == "length":
            msg["content"] = None
            choice["finish_reason"] = "length"
        elif arg == "filter":
            msg["content"] = None
            choice["finish_reason"] = "content_filter"
        elif arg == "parts":
            msg["content"] = [{"type": "text", "text": "part one, "},
                              {"type": "text", "text": "part two"}]
        elif arg == "refusal":
            msg["content"] = None
            msg["refusal"] = "I can't help with that."
        elif arg == "nochoices":
            doc["choices"] = []
        elif arg == "overcached":
            # impossible usage: more cached tokens than prompt tokens
            doc["usage"]["prompt_tokens_details"] = {"cached_tokens": 5000, "audio_tokens": 0}
        elif arg == "negative":
            doc["usage"]["prompt_tokens"] = -5
        elif arg == "details":
            # CompletionUsage (completions.d.ts 91): cache writes and reasoning
            doc["usage"]["prompt_tokens_details"] = {"cached_tokens": 200, "cache_write_tokens": 100,
                                                     "audio_tokens": 0}
            doc["usage"]["completion_tokens_details"]["reasoning_tokens"] = 150
            doc["service_tier"] = "flex"
        return doc

    def _hang(self):
        """Send nothing; return once the client closes (or after HANG_LIMIT_S)."""
        self.close_connection = True
        sock = self.connection
        deadline = time.monotonic() + HANG_LIMIT_S
        while time.monotonic() < deadline:
            r, _, _ = select.select([sock], [], [], 0.05)
            if r:
                try:
                    if not sock.recv(65536):   # EOF: client closed
                        return
                except OSError:
                    return

    def _huge(self, ans, total):
        """A valid answer padded with 'x' to exactly `total` bytes, streamed."""
        mark = "@@MOCKPAD%s@@" % os.urandom(8).hex()
        ct = None
        for _ in range(6):                     # fixpoint: token digits change the size
            doc = ans.render(content=ans.content + mark, out_tokens=ct)
            head, tail = json.dumps(doc).encode().split(mark.encode())
            pad = max(total - len(head) - len(tail), 0)
            new_ct = max(1, ceil4(len(ans.content) + pad))
            if new_ct == ct:
                break
            ct = new_ct
        self._head(200, "application/json", len(head) + pad + len(tail))
        self._headers_buffer.append(head)
        try:
            self.flush_headers()
            chunk = b"x" * 65536
            while pad > 0:
                n = min(pad, len(chunk))
                self.wfile.write(chunk if n == len(chunk) else chunk[:n])
                pad -= n
            self.wfile.write(tail)
        except OSError:
            self.close_connection = True

    def _drip(self, ans, ms):
        """Correct headers, then the body one byte every `ms` milliseconds."""
        body = json.dumps(ans.render()).encode()
        self._head(200, "application/json", len(body))
        try:
            self.flush_headers()
            for i in range(len(body)):
                time.sleep(ms / 1000.0)
                self.wfile.write(body[i:i + 1])
        except OSError:
            self.close_connection = True


class MockServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024                  # many clients connecting at once

    def __init__(self, addr, handler, api_key=None, verbose=False):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.api_key, self.verbose, self.state = api_key, verbose, State()
        super().__init__(addr, handler)

    def server_bind(self):
        # skip HTTPServer's socket.getfqdn() (a reverse DNS lookup)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    # Connection accounting: +1 at accept, -1 once the socket is closed.
    def process_request(self, request, client_address):
        with self.state.lock:
            self.state.open_connections += 1
            self.state.connections_total += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        try:
            super().shutdown_request(request)
        finally:
            with self.state.lock:
                self.state.open_connections -= 1

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return                             # client disconnects are routine
        super().handle_error(request, client_address)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Mock OpenAI/Anthropic server for tests.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    ap.add_argument("--port-file", help="write the bound port here (atomically)")
    ap.add_argument("--api-key", help="require this key outside /open")
    ap.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = ap.parse_args(argv)

    server = MockServer((args.host, args.port), Handler, args.api_key, args.verbose)
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    host = "[%s]" % args.host if ":" in args.host else args.host
    print("mock_llm listening on http://%s:%d" % (host, port), flush=True)

    def stop(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
