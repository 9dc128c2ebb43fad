#!/usr/bin/env python3
"""Times PyTorch's scaled_dot_product_attention (flash backend) on the GPU at the
shape ./bench attention uses, for a side-by-side ratio in tools/gpu_check.sh.

Causal, bf16, q [B, Hq, T, Dh], k/v [B, Hkv, T, Dh] (GQA via enable_gqa; when the
flash backend refuses it, k/v are expanded to Hq heads before timing). Median of
--iters runs after 3 warm-ups, CUDA events. FLOPs count the causal half of the
T x T scores: forward 2 GEMMs, backward 5, at 2 * B * Hq * T * T * Dh / 2 each.

Output: one CSV line per direction:  torch_sdpa_flash,<direction>,<ms>,<TFLOP/s>
"""
import argparse
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not torch.cuda.is_available():
        print("error: no CUDA device visible to torch", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(a.batch, a.heads, a.seq, a.head_dim, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(a.batch, a.kv_heads, a.seq, a.head_dim, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(a.batch, a.kv_heads, a.seq, a.head_dim, device=dev, dtype=dt, requires_grad=True)
    dout = torch.randn(a.batch, a.heads, a.seq, a.head_dim, device=dev, dtype=dt)

    def attn():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            try:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            except RuntimeError:
                g = a.heads // a.kv_heads
                return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                                      is_causal=True)

    def median_ms(fn):
        for _ in range(3):
            fn()
        times = []
        for _ in range(a.iters):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        return sorted(times)[len(times) // 2]

    gemm_flops = 2.0 * a.batch * a.heads * a.seq * a.seq * a.head_dim / 2
    with torch.no_grad():
        fwd = median_ms(attn)
    both = median_ms(lambda: attn().backward(dout))
    for name, ms, gemms in (("fwd", fwd, 2), ("fwd+bwd", both, 7)):
        print(f"torch_sdpa_flash,{name},{ms:.4f},{gemms * gemm_flops / ms * 1e-9:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
