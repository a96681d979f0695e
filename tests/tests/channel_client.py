#!/usr/bin/env python3
"""The official `openai` client through `attest proxy` (tests/tests/channel.rs).

Modes:
  ok BASE_URL                 models, plain and streaming chat and completions; the receipt
                              header on a plain answer. Small max_tokens (QEMU under TCG).
  error BASE_URL              one chat request must fail with an API status error.
  stream-error BASE_URL MODEL one streaming chat must fail mid-stream (an error event).

Prints one JSON line per check ({"check", "ok", "detail"}) and, for the error modes, one
line {"status", "code", "message"}; exits 1 if a check failed. Never prints completions.
"""
import json
import sys

import openai

FAILED = []


def check(name, ok, detail=""):
    print(json.dumps({"check": name, "ok": bool(ok), "detail": detail}), flush=True)
    if not ok:
        FAILED.append(name)


def client(base):
    return openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)


MSGS = [{"role": "user", "content": "Say hello."}]


def ok(base):
    c = client(base)
    models = [m.id for m in c.models.list().data]
    check("models.list", len(models) == 1, models)
    model = models[0]

    raw = c.chat.completions.with_raw_response.create(model=model, messages=MSGS, temperature=0, max_tokens=4)
    chat = raw.parse()
    check("chat.plain", chat.object == "chat.completion" and isinstance(chat.choices[0].message.content, str)
          and 0 < chat.usage.completion_tokens <= 4, f"finish {chat.choices[0].finish_reason}")
    check("chat.receipt_header", len(raw.headers.get("chrysalis-receipt", "")) > 100,
          f"{len(raw.headers.get('chrysalis-receipt', ''))} base64 chars")

    stream = c.chat.completions.create(model=model, messages=MSGS, temperature=0, max_tokens=4, stream=True,
                                       stream_options={"include_usage": True})
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                parts.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
    check("chat.stream", finish in ("stop", "length") and usage is not None and usage.completion_tokens <= 4,
          f"{len(parts)} deltas, finish {finish}")
    check("chat.stream_matches_plain", "".join(parts) == chat.choices[0].message.content,
          "greedy: the stream's text equals the plain answer")

    comp = c.completions.create(model=model, prompt="Once upon a time", temperature=0, max_tokens=4)
    check("completion.plain", comp.object == "text_completion" and 0 < comp.usage.completion_tokens <= 4,
          f"finish {comp.choices[0].finish_reason}")
    pieces = [ch.choices[0].text for ch in c.completions.create(
        model=model, prompt="Once upon a time", temperature=0, max_tokens=4, stream=True) if ch.choices]
    check("completion.stream", "".join(pieces) == comp.choices[0].text, f"{len(pieces)} pieces")

    try:
        c.chat.completions.create(model="no-such-model", messages=MSGS, max_tokens=1)
        check("error.encrypted_404", False, "no error")
    except openai.NotFoundError as e:
        check("error.encrypted_404", e.body.get("code") == "model_not_found", json.dumps(e.body)[:200])


def error(base):
    try:
        client(base).chat.completions.create(model="any", messages=MSGS, max_tokens=2)
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        print(json.dumps({"status": e.status_code, "code": body.get("code"), "message": body.get("message")}))
        return
    check("error", False, "no error raised")


def stream_error(base, model):
    got = []
    try:
        for chunk in client(base).chat.completions.create(model=model, messages=MSGS, max_tokens=4, stream=True):
            got.append(chunk)
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        print(json.dumps({"status": e.status_code, "code": body.get("code"), "message": body.get("message")}))
        return
    except openai.APIError as e:
        print(json.dumps({"status": None, "code": getattr(e, "code", None), "message": e.message,
                          "chunks_before": len(got)}))
        return
    check("stream_error", False, f"stream ended normally after {len(got)} chunks")


if __name__ == "__main__":
    mode, base = sys.argv[1], sys.argv[2]
    if mode == "ok":
        ok(base)
    elif mode == "error":
        error(base)
    elif mode == "stream-error":
        stream_error(base, sys.argv[3])
    else:
        sys.exit(f"unknown mode {mode}")
    sys.exit(1 if FAILED else 0)
