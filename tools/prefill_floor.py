"""Dev-only: the kernel floor of a SmolLM2-135M prefill on this machine.

Times, with the libtorch build kvcat links (torch 2.11, MKL), each heavy kernel a prefill of
`t` tokens must run, in isolation and at its real shape, and sums them over the 30 layers:
the fused QKV, O, fused gate-up and down GEMMs and the causal flash attention (GQA 9/3, head
dim 64). Elementwise work (norms, RoPE, SiLU, residual adds) and the last-position LM head are
left out, so the sum is a lower bound on any prefill that runs these kernels, kvcat's and
transformers' alike. Compare it with `kvcat perf --sections prefill` and `tools/perf_hf.py`:

    .venv/bin/python tools/prefill_floor.py --lens 1024,4096 --threads 2

Also prints the GFLOP/s of one large square `sgemm` (the machine's practical f32 peak).
Not used by the product or the tests.
"""
import argparse
import time

import torch
import torch.nn.functional as F

LAYERS, HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM = 30, 576, 1536, 9, 3, 64


def best_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def layer_kernels(t):
    x = torch.randn(t, HIDDEN)
    qkv_w = torch.randn((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN)
    o_w = torch.randn(HIDDEN, HIDDEN)
    gate_up_w = torch.randn(2 * INTER, HIDDEN)
    down_w = torch.randn(HIDDEN, INTER)
    h = torch.randn(t, INTER)
    q = torch.randn(1, HEADS, t, HEAD_DIM)
    k = torch.randn(1, KV_HEADS, t, HEAD_DIM)
    v = torch.randn(1, KV_HEADS, t, HEAD_DIM)
    return {
        "qkv": (lambda: x @ qkv_w.T, 2 * t * HIDDEN * qkv_w.shape[0]),
        "o": (lambda: x @ o_w.T, 2 * t * HIDDEN * HIDDEN),
        "gate_up": (lambda: x @ gate_up_w.T, 2 * t * HIDDEN * 2 * INTER),
        "down": (lambda: h @ down_w.T, 2 * t * INTER * HIDDEN),
        "attention": (
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
            2 * 2 * HEADS * HEAD_DIM * t * (t + 1) / 2,
        ),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lens", default="1024,4096")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with torch.no_grad():
        a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
        secs = best_seconds(lambda: a @ b, 3)
        print(f"sgemm 4096^3: {2 * 4096**3 / secs / 1e9:.1f} GFLOP/s")
        for t in [int(x) for x in args.lens.split(",")]:
            total, flops = 0.0, 0.0
            for name, (fn, f) in layer_kernels(t).items():
                s = best_seconds(fn, args.repeats)
                total += LAYERS * s
                flops += LAYERS * f
                print(f"  t={t} {name}: {s * 1e3:.1f} ms/layer, {f / s / 1e9:.1f} GFLOP/s")
            print(f"t={t}: kernel floor {total:.3f} s = {t / total:.1f} tok/s "
                  f"({flops / 1e9:.0f} GFLOP at {flops / total / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
