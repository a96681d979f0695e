#!/usr/bin/env python3
"""Make a small seeded decoder (Llama or Qwen2 layout) as safetensors + config.json +
tokenizer.json + tokenizer_config.json, entirely offline.

The tokenizer is a byte-level BPE trained with the `tokenizers` package on a corpus generated
by this script; the weights are drawn by `transformers` from a fixed seed. Same inputs and
package versions give the same files, so the runtime's tests can compare candle against
transformers on exactly these weights. Idempotent: an existing complete folder is kept.

Usage: make_tiny_model.py --arch llama|qwen2 [--out DIR]
       (default DIR: $CHRYSALIS_MODELS/tiny-<arch>)
"""
import argparse
import json
import os
import shutil
import sys

SEED = 20261101
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2's pre-tokenizer split (its tokenizer.json); transformers' Qwen2Tokenizer imposes it.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def corpus():
    """A deterministic training text with words, numbers, punctuation and some non-ASCII."""
    subjects = ["the enclave", "a model owner", "the runtime", "an attacker", "the verifier",
                "the kernel", "a client", "the host", "our image", "the GPU"]
    verbs = ["measures", "verifies", "seals", "unseals", "serves", "rejects", "signs",
             "reads", "boots", "trusts"]
    objects = ["the weights", "a report", "the event log", "every token", "the key",
               "its firmware", "the policy", "a nonce", "the answer", "memory"]
    extras = ["quickly.", "twice!", "in 42 ms.", "at 3.7 GHz?", "with AES-256-GCM.",
              "(see §4.2).", "— not the host.", "naïvely, café-style.", "for 1,000 users.",
              "over HTTP/1.1: OK"]
    lines = []
    for i in range(2000):
        s = subjects[(i * 7) % 10]
        v = verbs[(i * 3 + i // 10) % 10]
        o = objects[(i * 11 + i // 7) % 10]
        e = extras[(i * 13 + i // 3) % 10]
        lines.append(f"{s.capitalize()} {v} {o} {e} Step {i % 97}: {i * 31 % 1009}.")
    return lines


def make_tokenizer(out, arch):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from tokenizers import Regex

    tok = Tokenizer(models.BPE())
    if arch == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    if arch == "llama":
        # Llama-3 style: the tokenizer itself prepends the BOS token.
        bos = SPECIALS[0]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIALS[0] if arch == "llama" else None,
        "eos_token": SPECIALS[2],
        "pad_token": SPECIALS[0],
        "unk_token": None,
        "model_max_length": 256,
        "chat_template": CHATML,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return tok


def make_model(out, arch, tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SEED)
    common = dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        # Wide initialisation so the logits are spread out: greedy decoding of a random
        # model then has no near-ties and tests compare meaningful argmaxes.
        initializer_range=0.25,
        eos_token_id=tok.token_to_id(SPECIALS[2]),
        bos_token_id=tok.token_to_id(SPECIALS[0]),
        torch_dtype="float32",
    )
    if arch == "llama":
        config = LlamaConfig(tie_word_embeddings=False, hidden_act="silu", **common)
        model = LlamaForCausalLM(config)
    else:
        config = Qwen2Config(tie_word_embeddings=True, hidden_act="silu", sliding_window=256,
                             max_window_layers=3, use_sliding_window=False, **common)
        model = Qwen2ForCausalLM(config)
        with torch.no_grad():  # non-zero q/k/v biases so the bias path is exercised
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.25)
    model = model.to(torch.float32).eval()
    model.save_pretrained(out, safe_serialization=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["llama", "qwen2"], required=True)
    ap.add_argument("--out")
    args = ap.parse_args()
    out = args.out
    if not out:
        models = os.environ.get("CHRYSALIS_MODELS")
        if not models:
            sys.exit("no output folder: pass --out or set CHRYSALIS_MODELS")
        out = os.path.join(models, f"tiny-{args.arch}")
    if all(os.path.exists(os.path.join(out, f)) for f in FILES):
        print(f"ok {out} (cached)")
        return
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    tok = make_tokenizer(tmp, args.arch)
    make_model(tmp, args.arch, tok)
    for extra in os.listdir(tmp):  # keep only the files the runtime reads
        if extra not in FILES:
            os.remove(os.path.join(tmp, extra))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"ok {out}")


if __name__ == "__main__":
    main()
