#!/usr/bin/env bash
# Seed fuzz/corpus/<target>/ from the genuine vectors in attest/testdata (the corpus itself is not
# committed): TDX quotes as raw bytes (the .hex files decoded), CCEL logs cut short (events plus
# a little padding) so that libFuzzer's max_len stays small.
# Usage (from attest/): fuzz/seed-corpus.sh && cargo +nightly fuzz run tdx_quote -- -max_total_time=600
set -euo pipefail
cd "$(dirname "$0")"
python3 - <<'PY'
import binascii, pathlib
data = pathlib.Path("../testdata")
out = pathlib.Path("corpus")
q = out / "tdx_quote"; q.mkdir(parents=True, exist_ok=True)
for p in sorted((data / "tdx").glob("*/*")):
    if p.suffix in (".json", ".md"):
        continue
    b = p.read_bytes()
    if p.suffix == ".hex":
        s = b.decode().strip()
        b = binascii.unhexlify(s[2:] if s.startswith("0x") else s)
    (q / f"{p.parent.name}_{p.stem}").write_bytes(b)
c = out / "ccel"; c.mkdir(parents=True, exist_ok=True)
for p in sorted((data / "tdx-eventlog").glob("*/*")):
    if p.suffix in (".json", ".md", ".txt", ".snap"):
        continue
    b = p.read_bytes()
    if b[-1:] == b"\xff":
        # 0xFF-padded: the events end where the padding starts.
        b = b[: len(b.rstrip(b"\xff"))] + b"\xff" * 16
    else:
        # Zero-padded: events may end in zeros themselves, so keep a generous prefix.
        b = b[:16384]
    (c / f"{p.parent.name}_{p.name}").write_bytes(b)
print("seeded", len(list(q.iterdir())), "quotes and", len(list(c.iterdir())), "event logs")
PY
