#!/usr/bin/env python3
"""`cargo xtask demo`, step 7: the official `openai` client, unchanged, pointed at the local
`attest proxy`, which verified the runtime and seals every request to its attested key.

Usage: demo_chat.py BASE_URL PROMPT MAX_TOKENS
Streams the answer to stdout; the last line is JSON: {"model", "ttft_s", "chunks"}.
"""
import json
import sys
import time

import openai


def main(base, prompt, max_tokens):
    client = openai.OpenAI(base_url=base, api_key="not-needed", max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    start = time.monotonic()
    first, chunks = None, 0
    stream = client.chat.completions.create(
        model=model, stream=True, max_tokens=max_tokens, temperature=0,
        messages=[{"role": "user", "content": prompt}],
    )
    for event in stream:
        if event.choices and event.choices[0].delta.content:
            if first is None:
                first = time.monotonic() - start
            chunks += 1
            print(event.choices[0].delta.content, end="", flush=True)
    print()
    if first is None:
        sys.exit("the stream carried no tokens")
    print(json.dumps({"model": model, "ttft_s": round(first, 3), "chunks": chunks}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
