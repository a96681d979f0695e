#!/usr/bin/env python3
"""Drives a running Chrysalis inference server with the official `openai` client.

Modes:
  api BASE_URL MODEL      plain and streaming chat and completions, seeds, stop strings,
                          usage counts, and every error the API defines (404, 400, 413, 429);
                          cancels one stream early (the Rust test checks the server log).
  unsealed BASE_URL MODEL every endpoint answers 503 model_not_ready before unsealing.

Prints one JSON line per check ({"check", "ok", "detail"}); exits 1 if any check failed.
Never prints prompt or completion text beyond what a failure needs to explain itself.
"""
import json
import sys
import threading

import urllib.error
import urllib.request
import openai

FAILED = []


def check(name, ok, detail=""):
    print(json.dumps({"check": name, "ok": bool(ok), "detail": detail}), flush=True)
    if not ok:
        FAILED.append(name)


def expect_error(name, fn, status, code=None, param=None):
    try:
        fn()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        ok = e.status_code == status and all(k in err for k in ("message", "type", "param", "code"))
        if code is not None:
            ok = ok and err.get("code") == code
        if param is not None:
            ok = ok and err.get("param") == param
        check(name, ok, f"status {e.status_code} error {json.dumps(err)[:300]}")
        return e
    except Exception as e:  # noqa: BLE001
        check(name, False, f"unexpected {type(e).__name__}: {e}")
        return None
    check(name, False, "no error raised")
    return None


def raw_http(url, data):
    """(status, JSON body) of a request the openai client cannot make (malformed body, bad route)."""
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def api(base, model):
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
    models = client.models.list()
    check("models.list", [m.id for m in models.data] == [model], [m.id for m in models.data])

    msgs = [{"role": "user", "content": "List three colours of the rainbow. MARKER-PROMPT-4c1e"}]
    chat = client.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=24)
    text = chat.choices[0].message.content
    u = chat.usage
    check("chat.plain", isinstance(text, str) and len(text) > 0 and chat.object == "chat.completion",
          f"finish {chat.choices[0].finish_reason}")
    check("chat.usage", u.prompt_tokens > 0 and 0 < u.completion_tokens <= 24
          and u.total_tokens == u.prompt_tokens + u.completion_tokens, str(u))

    stream = client.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=24,
                                            stream=True, stream_options={"include_usage": True})
    parts, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    check("chat.stream", "".join(parts) == text and finish == chat.choices[0].finish_reason
          and roles == ["assistant"], f"{len(parts)} chunks, finish {finish}")
    check("chat.stream.usage", usage is not None and usage.completion_tokens == u.completion_tokens
          and usage.prompt_tokens == u.prompt_tokens, str(usage))

    prompt = "Once upon a time, in a small village by the sea,"
    comp = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=20)
    ctext = comp.choices[0].text
    check("completions.plain", comp.object == "text_completion" and len(ctext) > 0
          and comp.usage.completion_tokens <= 20, f"finish {comp.choices[0].finish_reason}")
    sparts = [c.choices[0].text for c in client.completions.create(
        model=model, prompt=prompt, temperature=0, max_tokens=20, stream=True) if c.choices]
    check("completions.stream", "".join(sparts) == ctext, f"{len(sparts)} chunks")
    check("completions.length", comp.choices[0].finish_reason == "length"
          and comp.usage.completion_tokens == 20, comp.choices[0].finish_reason)

    a = client.completions.create(model=model, prompt=prompt, temperature=0.9, top_p=0.9, seed=1234, max_tokens=16)
    b = client.completions.create(model=model, prompt=prompt, temperature=0.9, top_p=0.9, seed=1234, max_tokens=16)
    check("seed.deterministic", a.choices[0].text == b.choices[0].text)
    k = client.completions.create(model=model, prompt=prompt, temperature=0.7, seed=7, max_tokens=8,
                                  extra_body={"top_k": 5})
    check("top_k.accepted", k.usage.completion_tokens >= 1)

    # A stop string taken from the middle of the greedy text: the answer ends right before it.
    words = ctext.split()
    if len(words) >= 4:
        stop = " " + words[2]
        cut = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=20, stop=[stop, "@@@"])
        check("stop.string", cut.choices[0].finish_reason == "stop"
              and ctext.startswith(cut.choices[0].text) and stop not in cut.choices[0].text
              and len(cut.choices[0].text) < len(ctext), f"finish {cut.choices[0].finish_reason}")
    else:
        check("stop.string", False, "greedy text too short to pick a stop string")

    # Errors, each in OpenAI's shape.
    expect_error("error.unknown_model", lambda: client.chat.completions.create(
        model="no-such-model", messages=msgs), 404, "model_not_found", "model")
    expect_error("error.context_length", lambda: client.completions.create(
        model=model, prompt="word " * 9000, max_tokens=10), 400, "context_length_exceeded")
    expect_error("error.max_tokens_past_context", lambda: client.completions.create(
        model=model, prompt=prompt, max_tokens=10_000_000), 400, "context_length_exceeded")
    expect_error("error.temperature", lambda: client.chat.completions.create(
        model=model, messages=msgs, temperature=5), 400, None, "temperature")
    expect_error("error.n", lambda: client.chat.completions.create(
        model=model, messages=msgs, n=2), 400, None, "n")
    expect_error("error.empty_messages", lambda: client.chat.completions.create(
        model=model, messages=[]), 400, None, "messages")
    expect_error("error.body_too_large", lambda: client.completions.create(
        model=model, prompt="x" * (2 << 20), max_tokens=1), 413, "request_too_large")
    status, body = raw_http(base + "/chat/completions", b"{not json")
    check("error.bad_json", status == 400 and "error" in body, f"status {status}")
    status, body = raw_http(base + "/no/such/route", None)
    check("error.unknown_route", status == 404 and body.get("error", {}).get("type") == "invalid_request_error",
          f"status {status}")

    # Cancellation: read two chunks of a long stream, then hang up.
    long = client.chat.completions.create(model=model, temperature=0.8, seed=3, max_tokens=3000,
                                          stream=True, messages=[{"role": "user", "content": "Write a very long story."}],
                                          extra_body={"ignore_eos": True})
    got = 0
    for _ in long:
        got += 1
        if got >= 3:
            break
    long.close()
    check("stream.cancel", got >= 3, f"read {got} chunks then closed")

    # Queue: many concurrent long requests; the ones beyond the queue get 429 + Retry-After.
    results = []
    lock = threading.Lock()

    def one():
        c = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)
        try:
            raw = c.completions.with_raw_response.create(model=model, prompt=prompt, max_tokens=48,
                                                         temperature=0, extra_body={"ignore_eos": True})
            with lock:
                results.append((raw.http_response.status_code, None))
        except openai.RateLimitError as e:
            with lock:
                results.append((429, e.response.headers.get("retry-after")))
        except Exception as e:  # noqa: BLE001
            with lock:
                results.append((type(e).__name__, None))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(str(c) for c, _ in results)
    limited = [ra for c, ra in results if c == 429]
    check("queue.429", len(limited) >= 1 and all(ra is not None for ra in limited)
          and all(c in (200, 429) for c, _ in results) and 200 in [c for c, _ in results], " ".join(codes))
    after = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=4)
    check("queue.recovers", after.usage.completion_tokens >= 1)


def batch(base, model):
    """Eight concurrent streaming chats, each must get the answer it gets alone."""
    questions = ["What is 2 + 2?", "Name a colour.", "What is the capital of France?", "Say hello in Spanish.",
                 "What is a CPU?", "Name a planet.", "What is water made of?", "Count to three."]
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)

    def ask(q, stream):
        r = client.chat.completions.create(model=model, temperature=0, max_tokens=24, stream=stream,
                                           messages=[{"role": "user", "content": q}])
        if not stream:
            return r.choices[0].message.content
        return "".join(c.choices[0].delta.content or "" for c in r if c.choices)

    alone = [ask(q, False) for q in questions]
    together = [None] * len(questions)

    def one(i):
        try:
            together[i] = ask(questions[i], True)
        except Exception as e:  # noqa: BLE001
            together[i] = f"error {type(e).__name__}: {e}"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wrong = [i for i, (a, b) in enumerate(zip(alone, together)) if a != b or not a]
    check("batch.eight_streams", not wrong,
          f"{len(questions) - len(wrong)} of {len(questions)} equal alone; differing: "
          + "; ".join(f"{i}: {alone[i]!r} vs {together[i]!r}" for i in wrong))
    check("batch.distinct", len(set(alone)) >= 6, f"{len(set(alone))} distinct answers")


def unsealed(base, model):
    # One client, one kept-alive connection, no retries: each 503 must leave the connection
    # usable for the next request (the runtime reads the body before answering).
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=30)
    e = expect_error("unsealed.models", lambda: client.models.list(), 503, "model_not_ready")
    check("unsealed.retry_after", e is not None and e.response.headers.get("retry-after") is not None)
    expect_error("unsealed.chat", lambda: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]), 503, "model_not_ready")
    expect_error("unsealed.completions", lambda: client.completions.create(
        model=model, prompt="hi"), 503, "model_not_ready")


if __name__ == "__main__":
    mode, base, model = sys.argv[1:4]
    {"api": api, "batch": batch, "unsealed": unsealed}[mode](base, model)
    print(json.dumps({"failed": FAILED}))
    sys.exit(1 if FAILED else 0)
