"""Attention benchmark: Pallas vs cuDNN/XLA TFLOP/s and decode bandwidth on GPU; blocked vs dense XLA time and memory on CPU.

    python -m kernels.bench [--json OUT] [--dry-run] [--quick]

On a GPU it times forward and forward+backward of impl="pallas" against
jax.nn.dot_product_attention (implementation "cudnn" and "xla") for T = 1K..32K and several
(n_q, n_kv), and the Pallas decode kernel's K/V read bandwidth against the card's measured
copy bandwidth. On CPU it times "xla_blocked" against the dense "xla" path and reads each
compiled program's temporary memory (memory_analysis: deterministic, no run needed); a dense
run whose temporaries exceed --max-dense-gib is compiled but not run. Causal FLOPs are
halved. --dry-run prints the plan for the current backend (and the GPU plan) without timing.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import kernels

GPU_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
GPU_HEADS = ((32, 32), (32, 8), (32, 1))  # (n_q, n_kv): MHA, GQA-4, MQA
GPU_HEAD_DIM = 128
GPU_TOKENS = 32768  # batch * T per step, so every length does the same work per token
DECODE_LENGTHS = (4096, 32768, 131072)
CPU_LENGTHS = (1024, 2048, 4096, 8192, 16384)
CPU_HEADS = (4, 1)
CPU_HEAD_DIM = 64


def attention_flops(batch: int, t: int, s: int, n_q: int, d: int, causal: bool, backward: bool) -> float:
    """QK^T and PV (2 flops per MAC each), halved when causal with T == S; backward adds 2.5x."""
    f = 4.0 * batch * n_q * t * s * d
    if causal:
        f *= 0.5 if t == s else (s - (t - 1) / 2) / s  # visible fraction under bottom-right alignment
    return f * (3.5 if backward else 1.0)


def _time(fn, *args, reps: int = 5) -> float:
    """Median seconds per call after one warm-up (which includes compilation)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _fwd_bwd(attn):
    def loss(q, k, v):
        return jnp.sum(attn(q, k, v).astype(jnp.float32))

    return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))


def _gpu_attention_fns():
    def sdpa(implementation):
        def f(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)

        return f

    return {
        "pallas": functools.partial(kernels.attention, causal=True, impl="pallas"),
        "cudnn": sdpa("cudnn"),
        "xla_sdpa": sdpa("xla"),
    }


def gpu_plan(quick: bool) -> list[dict]:
    lengths = GPU_LENGTHS[:2] if quick else GPU_LENGTHS
    rows = []
    for n_q, n_kv in GPU_HEADS:
        for t in lengths:
            for impl in _gpu_attention_fns():
                rows.append(dict(kind="attention", impl=impl, batch=max(1, GPU_TOKENS // t), t=t, n_q=n_q, n_kv=n_kv, d=GPU_HEAD_DIM))
    for s in DECODE_LENGTHS[:1] if quick else DECODE_LENGTHS:
        for n_q, n_kv in GPU_HEADS:
            rows.append(dict(kind="decode", impl="pallas", batch=8, s=s, n_q=n_q, n_kv=n_kv, d=GPU_HEAD_DIM))
    return rows


def cpu_plan(quick: bool) -> list[dict]:
    lengths = CPU_LENGTHS[:3] if quick else CPU_LENGTHS
    n_q, n_kv = CPU_HEADS
    return [dict(kind="cpu", impl=impl, batch=1, t=t, n_q=n_q, n_kv=n_kv, d=CPU_HEAD_DIM)
            for t in lengths for impl in ("xla", "xla_blocked")]


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device copy (read + write) of 1 GiB."""
    x = jnp.ones((1 << 28,), jnp.float32)
    sec = _time(jax.jit(lambda a: a * 1.0), x)
    return 2 * x.nbytes / sec


def run_gpu_row(row: dict, rng) -> dict:
    b, d, n_q, n_kv = row["batch"], row["d"], row["n_q"], row["n_kv"]
    if row["kind"] == "decode":
        s = row["s"]
        q = jnp.asarray(rng.standard_normal((b, n_q, d)), jnp.bfloat16)
        kc = jnp.asarray(rng.standard_normal((b, s, n_kv, d)), jnp.bfloat16)
        lengths = jnp.full((b,), s, jnp.int32)
        sec = _time(jax.jit(functools.partial(kernels.decode_attention, impl="pallas")), q, kc, kc, lengths)
        kv_bytes = 2 * b * s * n_kv * d * 2
        return {**row, "ms": sec * 1e3, "kv_GBps": kv_bytes / sec / 1e9}
    t = row["t"]
    q = jnp.asarray(rng.standard_normal((b, t, n_q, d)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((b, t, n_kv, d)), jnp.bfloat16)
    attn = _gpu_attention_fns()[row["impl"]]
    out = dict(row)
    fwd = _time(jax.jit(attn), q, k, k)
    out["fwd_ms"], out["fwd_TFLOPs"] = fwd * 1e3, attention_flops(b, t, t, n_q, d, True, False) / fwd / 1e12
    both = _time(_fwd_bwd(attn), q, k, k)
    out["fwdbwd_ms"], out["fwdbwd_TFLOPs"] = both * 1e3, attention_flops(b, t, t, n_q, d, True, True) / both / 1e12
    return out


def run_cpu_row(row: dict, rng, max_dense_gib: float) -> dict:
    b, t, n_q, n_kv, d = row["batch"], row["t"], row["n_q"], row["n_kv"], row["d"]
    attn = functools.partial(kernels.attention, causal=True, impl=row["impl"])
    shapes = (jax.ShapeDtypeStruct((b, t, n_q, d), jnp.float32), jax.ShapeDtypeStruct((b, t, n_kv, d), jnp.float32))
    fwd, both = jax.jit(attn), _fwd_bwd(attn)
    out = dict(row)
    for name, fn in (("fwd", fwd), ("fwdbwd", both)):
        compiled = fn.lower(shapes[0], shapes[1], shapes[1]).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        out[f"{name}_temp_MiB"] = temp / 2**20
        if temp > max_dense_gib * 2**30:
            out[f"{name}_s"] = None  # compiled only: running would exceed the memory cap
            continue
        q = jnp.asarray(rng.standard_normal((b, t, n_q, d)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((b, t, n_kv, d)), jnp.float32)
        out[f"{name}_s"] = _time(compiled, q, k, k, reps=2)
        flops = attention_flops(b, t, t, n_q, d, True, name == "fwdbwd")
        out[f"{name}_GFLOPs"] = flops / out[f"{name}_s"] / 1e9
    return out


def _table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k != "kind"]
    for r in rows[1:]:
        keys += [k for k in r if k not in keys and k != "kind"]

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results (and device) as JSON here")
    parser.add_argument("--dry-run", action="store_true", help="print what would be timed, time nothing")
    parser.add_argument("--quick", action="store_true", help="only the shortest lengths")
    parser.add_argument("--max-dense-gib", type=float, default=4.0, help="CPU: skip running programs with more temporaries")
    args = parser.parse_args(argv)

    platform = jax.default_backend()
    on_gpu = platform in ("gpu", "cuda", "rocm")
    plan = gpu_plan(args.quick) if on_gpu else cpu_plan(args.quick)
    if args.dry_run:
        print(f"backend {platform}: {len(plan)} rows")
        print(_table(plan))
        if not on_gpu:
            gpu = gpu_plan(args.quick)
            print(f"\non a GPU it would time {len(gpu)} rows:")
            print(_table(gpu))
        return 0

    rng = np.random.default_rng(0)
    results, extra = [], {}
    if on_gpu:
        extra["copy_GBps"] = copy_bandwidth() / 1e9
        print(f"measured copy bandwidth: {extra['copy_GBps']:.0f} GB/s", flush=True)
    for i, row in enumerate(plan):
        print(f"[{i + 1}/{len(plan)}] {row}", file=sys.stderr, flush=True)
        try:
            res = run_gpu_row(row, rng) if on_gpu else run_cpu_row(row, rng, args.max_dense_gib)
        except Exception as e:  # one unsupported configuration (e.g. cuDNN shape limits) must not end the run
            res = {**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
        if on_gpu and "kv_GBps" in res:
            res["of_copy_bw"] = res["kv_GBps"] / extra["copy_GBps"]
        results.append(res)
    print(_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"backend": platform, "devices": [str(d) for d in jax.devices()], **extra, "rows": results}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
