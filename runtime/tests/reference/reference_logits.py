#!/usr/bin/env python3
"""Reference outputs from transformers for the runtime's candle correctness tests.

Reads a request JSON and writes a result JSON plus a raw little-endian f32 logits file:

  request: {"model": DIR, "gguf_file": NAME or null,
            "tokenize": [TEXT, ...],                      # ids with and without special tokens
            "chat": [[{"role", "content"}, ...], ...],    # apply_chat_template ids
            "sequences": [{"prompt": [IDS], "continuation": [IDS], "greedy": N}, ...]}
  result:  {"tokenize": [{"plain": [...], "special": [...]}, ...],
            "chat": [[ids], ...],
            "sequences": [{"greedy": [N ids], "rows": R, "offset": O}, ...], "vocab": V}
  logits:  for each sequence, R rows of V floats: the logits transformers computes (one
           forward pass over prompt + continuation, no KV cache) at the positions that
           predict each continuation token, i.e. positions len(prompt)-1 ... end-1.

The model runs in float32 on CPU; a GGUF file is loaded dequantized to f32 by transformers.
Usage: reference_logits.py REQUEST.json RESULT.json LOGITS.f32
"""
import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    req_path, out_path, logits_path = sys.argv[1:4]
    with open(req_path) as f:
        req = json.load(f)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    kw = {"gguf_file": req["gguf_file"]} if req.get("gguf_file") else {}
    tok = AutoTokenizer.from_pretrained(req["model"], **kw)
    result = {"tokenize": [], "chat": [], "sequences": []}
    for text in req.get("tokenize", []):
        result["tokenize"].append({
            "plain": tok(text, add_special_tokens=False)["input_ids"],
            "special": tok(text, add_special_tokens=True)["input_ids"],
        })
    for messages in req.get("chat", []):
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        result["chat"].append(list(ids))
    seqs = req.get("sequences", [])
    if seqs:
        model = AutoModelForCausalLM.from_pretrained(req["model"], dtype=torch.float32, **kw).eval()
        result["vocab"] = model.config.vocab_size
        with open(logits_path, "wb") as out, torch.no_grad():
            for s in seqs:
                prompt, cont = s["prompt"], s["continuation"]
                # Greedy continuation, one full forward per step (no cache: the plainest path).
                ids = list(prompt)
                for _ in range(s["greedy"]):
                    logits = model(torch.tensor([ids])).logits[0, -1]
                    ids.append(int(torch.argmax(logits)))
                greedy = ids[len(prompt):]
                full = torch.tensor([prompt + cont])
                logits = model(full).logits[0]
                rows = logits[len(prompt) - 1 : len(prompt) - 1 + len(cont)]
                out.write(rows.to(torch.float32).numpy().astype("<f4").tobytes())
                result["sequences"].append({"greedy": greedy, "rows": int(rows.shape[0])})
    else:
        open(logits_path, "wb").close()
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
