"""Dev-only reference for kvcat's GGUF loader: loads a GGUF with transformers' own GGUF
integration (which dequantizes and undoes llama.cpp's Q/K permutation itself) and prints
token ids and perplexity, so the Rust numbers can be checked against an independent path.

    /work/devpy/bin/python tools/gguf_reference.py GGUF --ids-file ids.json   # ppl of ids
    /work/devpy/bin/python tools/gguf_reference.py GGUF --text "..."          # token ids

Needs `transformers`, `torch` and the `gguf` package. Not used by the product or the tests.
"""
import argparse
import json
import math
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--ids-file", help="JSON list of token ids, or {'context': [...]}")
    ap.add_argument("--text")
    args = ap.parse_args()
    d, f = os.path.split(os.path.abspath(args.gguf))
    if args.text is not None:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        print(json.dumps(tok(args.text, add_special_tokens=False)["input_ids"]))
    if args.ids_file:
        ids = json.load(open(args.ids_file))
        if isinstance(ids, dict):
            ids = ids["context"] + ids.get("continuation", [])
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
        model.eval()
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0]
        logp = torch.log_softmax(logits[:-1].double(), -1)
        nll = -logp.gather(-1, x[0, 1:, None]).mean().item()
        print(f"tokens {len(ids)} nll {nll:.6f} ppl {math.exp(nll):.4f}")
        print(f"logits[0,:5] {logits[0, :5].tolist()}")
        print(f"logits[-1,:5] {logits[-1, :5].tolist()}")


if __name__ == "__main__":
    main()
