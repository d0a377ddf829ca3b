#!/usr/bin/env python3
"""sdpa_decode: PyTorch's scaled_dot_product_attention at the decode shapes of
bench_cuda_attention (the baseline for kn_cuda_attention; attention_vs_sdpa.sh runs both).

    python3 bench/kernels/sdpa_decode.py [--shape longchat-7b,llama3-8b] [--batch 4]
        [--ctx 2048,10240,20480,30720] [--iters 50] [--backends default,flash,...] [--dry-run]

Shapes: q [B, H, 1, 128] bf16, k and v [B, Hkv, ctx, 128] bf16 contiguous (uniform in
[-1, 1], fixed seed), is_causal False (one new token sees the whole context).
GQA (Hkv < H): enable_gqa=True where this torch has it and the backend takes it ("gqa=native");
otherwise K/V are repeat_interleave'd to H heads before timing ("gqa=repeat", the
repeat not timed, but the kernel then reads H/Hkv times the bytes).

Timing is bench_cuda_attention's: n_layers K/V buffers (the same formula: enough for
4x the L2, at least 2) so each call reads K/V that is not L2-resident, one warm-up call
per buffer, then torch.cuda._sleep holds the stream while the host queues --iters
calls between CUDA events (torch's host overhead per call is tens of us, more than a
short kernel), and the median event-to-event time is reported.
GB/s = 2 * B * ctx * Hkv * 128 * 2 bytes (K and V of the Hkv heads, read once) / time,
whatever the backend really reads.

Output, one line per (backend, shape, ctx), lines starting with # are context:
    sdpa-<backend> <shape> B=4 ctx=2048 us=12.3 GBs=2730.1 gqa=native layers=6
    sdpa-<backend> <shape> B=4 ctx=2048 error=<why>
Exit status: 0 ran, 2 bad arguments, 3 torch not installed, 4 no CUDA device.
"""
import argparse
import sys

HEAD_DIM = 128
SHAPES = {"longchat-7b": (32, 32), "llama3-8b": (32, 8)}  # name: (n_heads, n_kv_heads)
BACKENDS = ("default", "flash", "efficient", "cudnn", "math")
L2_FALLBACK_BYTES = 50 << 20  # H100's, when torch does not report the L2 size
MAX_LAYERS = 64


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="longchat-7b,llama3-8b")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--ctx", default="2048,10240,20480,30720")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--dry-run", action="store_true", help="print the plan; needs neither torch nor a GPU")
    a = p.parse_args(argv)
    try:
        a.ctx = [int(c) for c in a.ctx.split(",")]
    except ValueError:
        p.error(f"bad --ctx list {a.ctx!r}")
    a.shape = a.shape.split(",")
    a.backends = a.backends.split(",")
    for s in a.shape:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r} ({', '.join(SHAPES)})")
    for b in a.backends:
        if b not in BACKENDS:
            p.error(f"unknown backend {b!r} ({', '.join(BACKENDS)})")
    if any(c < 32 or c % 32 for c in a.ctx):
        p.error("--ctx values must be multiples of 32 (bench_cuda_attention's page)")
    if a.batch < 1 or a.iters < 1:
        p.error("--batch and --iters must be >= 1")
    return a


def kv_bytes(batch, ctx, n_kv_heads):
    return 2 * batch * ctx * n_kv_heads * HEAD_DIM * 2


def n_layers_for(layer_bytes, l2_bytes):
    """bench_cuda_attention's rotation: buffers enough for 4x the L2, at least 2."""
    return min(MAX_LAYERS, max(2, -(-4 * l2_bytes // layer_bytes)))


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def backend_ctx(torch, name):
    """A context manager that forces one SDPA backend (nullcontext for default)."""
    import contextlib

    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    enum = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
    return sdpa_kernel(getattr(SDPBackend, enum[name]))


def default_kernel_names(torch, fn):
    """The CUDA kernels one default call launches (which backend the dispatcher chose)."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        names = [e.key for e in prof.key_averages() if e.device_type.name == "CUDA" and "Memcpy" not in e.key]
        return ";".join(n.split("(")[0].split("<")[0].replace(" ", "")[:60] for n in names) or "?"
    except Exception as e:  # the profiler is a nicety: never fail the run for it
        return f"?({type(e).__name__})"


def time_calls(torch, fn, n_layers, iters):
    """Median us per call of fn(i) (i picks the buffer), host queued ahead of the GPU."""
    for i in range(n_layers):
        fn(i)
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
    # ~2 GHz: 2 ms plus 100 us of host time per queued call. _sleep is private: without
    # it the first calls may wait on the host, which the median mostly hides.
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(int(2e9 * (2e-3 + 100e-6 * iters)))
    for i in range(iters):
        ev[i].record()
        fn(i)
    ev[iters].record()
    ev[iters].synchronize()
    ms = [ev[i].elapsed_time(ev[i + 1]) for i in range(iters)]
    return 1e3 * median(ms), 1e3 * min(ms)


def run_one(torch, F, args, shape, ctx, l2_bytes, has_gqa):
    n_heads, n_kv_heads = SHAPES[shape]
    B = args.batch
    nbytes = kv_bytes(B, ctx, n_kv_heads)
    n_layers = n_layers_for(nbytes, l2_bytes)
    tag = f"{shape} B={B} ctx={ctx}"
    g = torch.Generator(device="cuda").manual_seed(1000 + ctx)
    dev, bf16 = "cuda", torch.bfloat16
    try:
        q = torch.empty(B, n_heads, 1, HEAD_DIM, device=dev, dtype=bf16).uniform_(-1, 1, generator=g)
        ks, vs = [], []
        for _ in range(n_layers):
            ks.append(torch.empty(B, n_kv_heads, ctx, HEAD_DIM, device=dev, dtype=bf16).uniform_(-1, 1, generator=g))
            vs.append(torch.empty(B, n_kv_heads, ctx, HEAD_DIM, device=dev, dtype=bf16).uniform_(-1, 1, generator=g))
    except torch.cuda.OutOfMemoryError:
        for b in args.backends:
            print(f"sdpa-{b} {tag} error=out-of-memory", flush=True)
        return
    rep = None  # K/V repeated to n_heads, built once if a backend needs it

    def repeated():
        nonlocal rep
        if rep is None:
            r = n_heads // n_kv_heads
            rep = ([k.repeat_interleave(r, dim=1) for k in ks], [v.repeat_interleave(r, dim=1) for v in vs])
        return rep

    for b in args.backends:
        modes = ["native", "repeat"] if n_kv_heads < n_heads and has_gqa else ["repeat" if n_kv_heads < n_heads else "mha"]
        done, why = False, ""
        for mode in modes:
            try:
                if mode == "native":
                    fn = lambda i: F.scaled_dot_product_attention(q, ks[i % n_layers], vs[i % n_layers], enable_gqa=True)
                elif mode == "repeat":
                    rk, rv = repeated()
                    fn = lambda i: F.scaled_dot_product_attention(q, rk[i % n_layers], rv[i % n_layers])
                else:
                    fn = lambda i: F.scaled_dot_product_attention(q, ks[i % n_layers], vs[i % n_layers])
                with backend_ctx(torch, b):
                    us, min_us = time_calls(torch, fn, n_layers, args.iters)
                    extra = f" kernels={default_kernel_names(torch, lambda: fn(0))}" if b == "default" else ""
                print(f"sdpa-{b} {tag} us={us:.2f} GBs={nbytes / (us * 1e3):.1f} gqa={mode} layers={n_layers} "
                      f"min_us={min_us:.2f}{extra}", flush=True)
                done = True
                break
            except Exception as e:  # noqa: BLE001 - one backend's failure must not end the run
                # "No available kernel" (backend refuses the shape/GQA/card), OOM, ...
                why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
                try:
                    torch.cuda.synchronize()
                except Exception:  # noqa: BLE001 - a sticky CUDA error: the next backend reports it
                    pass
        if not done:
            print(f"sdpa-{b} {tag} error=unsupported ({why})", flush=True)
    del ks, vs, rep, q
    torch.cuda.empty_cache()


def main(argv):
    args = parse_args(argv)
    if args.dry_run:
        print(f"# dry run: backends {','.join(args.backends)}, {args.iters} calls each; L2 assumed "
              f"{L2_FALLBACK_BYTES >> 20} MB")
        for shape in args.shape:
            for ctx in args.ctx:
                nb = kv_bytes(args.batch, ctx, SHAPES[shape][1])
                print(f"# plan {shape} B={args.batch} ctx={ctx} kv_MB={nb / 1e6:.1f} "
                      f"layers={n_layers_for(nb, L2_FALLBACK_BYTES)}")
        return 0
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"sdpa_decode: torch not found ({e}); nothing to compare against", file=sys.stderr)
        print("# torch not found")
        return 3
    if not torch.cuda.is_available():
        print(f"sdpa_decode: torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda}); "
              "run this on the GPU machine, or pass --dry-run", file=sys.stderr)
        print("# no CUDA device")
        return 4
    props = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(props, "L2_cache_size", 0) or L2_FALLBACK_BYTES
    # enable_gqa arrived in torch 2.5: probe it on a tiny call rather than parse versions
    try:
        t = torch.zeros(1, 2, 1, 8, device="cuda", dtype=torch.bfloat16)
        F.scaled_dot_product_attention(t, t[:, :1], t[:, :1], enable_gqa=True)
        has_gqa = True
    except TypeError:
        has_gqa = False
    except RuntimeError:  # the argument exists; the default backend refused the toy call
        has_gqa = True
    print(f"# torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
          f"device {props.name}, L2 {l2_bytes >> 20} MB, enable_gqa {'yes' if has_gqa else 'no'}")
    print(f"# sdpa: q [B,H,1,{HEAD_DIM}] bf16, k/v [B,Hkv,ctx,{HEAD_DIM}] bf16 contiguous, is_causal=False; "
          f"median of {args.iters} calls")
    for shape in args.shape:
        for ctx in args.ctx:
            run_one(torch, F, args, shape, ctx, l2_bytes, has_gqa)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
