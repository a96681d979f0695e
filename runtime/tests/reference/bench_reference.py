#!/usr/bin/env python3
"""Reference engines for `cargo xtask bench infer`: llama.cpp (llama-cpp-python) or PyTorch
(transformers, GGUF dequantized to f32) on the same GGUF and the same prompt token ids as
candle. Prints one JSON object per run, in the schema of `chrysalis-infer-dev bench`.

Usage: bench_reference.py --engine llama.cpp|torch --gguf FILE --ids IDS.json
                          [--gen 64] [--runs 3] [--threads 2]
"""
import argparse
import json
import os
import resource
import time


def peak_rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def llama_cpp(args, ids):
    import llama_cpp.llama_cpp as lib
    from llama_cpp import Llama

    # ggml's "extra buffer types" (AMX tiles, weight repacking) are turned off: on the
    # build machines AMX instructions trap (SIGILL at tileloadd: the VM does not grant AMX
    # state), and Q4_1 has no repacked kernel anyway. The SIMD dot products stay on.
    default_params = lib.llama_model_default_params

    def no_extra_bufts():
        p = default_params()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = no_extra_bufts

    t0 = time.perf_counter()
    llm = Llama(model_path=args.gguf, n_ctx=512, n_batch=512, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False, logits_all=False)
    load_s = time.perf_counter() - t0
    import numpy as np

    n_vocab = llm.n_vocab()

    def argmax_last():
        # llm.scores is not filled by eval() in this version: read the context's logits.
        logits = lib.llama_get_logits_ith(llm._ctx.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(n_vocab,))))

    for run in range(args.runs):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        tok = argmax_last()
        first = time.perf_counter()
        toks = [tok]
        for _ in range(args.gen - 1):
            llm.eval([tok])
            tok = argmax_last()
            toks.append(tok)
        end = time.perf_counter()
        emit(run, ids, toks, first - start, end - first, load_s, "Q4_1 (llama.cpp)")


def torch_engine(args, ids):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(args.gguf), gguf_file=os.path.basename(args.gguf),
                                                 dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    with torch.inference_mode():
        for run in range(args.runs):
            start = time.perf_counter()
            out = model(torch.tensor([ids]), use_cache=True)
            tok = int(torch.argmax(out.logits[0, -1]))
            first = time.perf_counter()
            toks, past = [tok], out.past_key_values
            for _ in range(args.gen - 1):
                out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = int(torch.argmax(out.logits[0, -1]))
                toks.append(tok)
            end = time.perf_counter()
            emit(run, ids, toks, first - start, end - first, load_s, "f32 (transformers from GGUF)")


def emit(run, ids, toks, ttft, gen, load_s, weights):
    print(json.dumps({
        "run": run, "prompt_tokens": len(ids), "generated_tokens": len(toks),
        "time_to_first_token_s": ttft, "prompt_tokens_per_s": len(ids) / ttft,
        "gen_tokens_per_s": (len(toks) - 1) / gen, "peak_rss_kib": peak_rss_kib(),
        "load_s": load_s, "weights": weights, "first_tokens": toks[:8],
    }), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["llama.cpp", "torch"], required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with open(args.ids) as f:
        ids = json.load(f)
    (llama_cpp if args.engine == "llama.cpp" else torch_engine)(args, ids)


if __name__ == "__main__":
    main()
