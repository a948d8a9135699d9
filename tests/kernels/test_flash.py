"""Pallas flash attention (interpret mode on CPU): forward and dq/dk/dv against a float64 NumPy oracle."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

import kernels
from kernels import flash

# Relative to the largest reference magnitude. f32: the kernel accumulates in f32 (ulp-level
# differences from summation order). bf16: inputs are rounded first (the oracle sees the same
# rounded values), then P and dS are cast to bf16 for the MXU/tensor-core products and the
# outputs are rounded to bf16 (8 mantissa bits, ~4e-3 per rounding).
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 4e-2}

# (n_q, n_kv, causal, T, S, block_q, block_k, dtype): a sample of the cross product that
# covers every head layout, both maskings, T < S, lengths off the block grid, several blocks.
CASES = [
    (1, 1, True, 37, 37, 16, 16, jnp.float32),
    (1, 1, False, 20, 45, 32, 16, jnp.float32),
    (4, 1, True, 13, 50, 16, 32, jnp.float32),
    (4, 1, False, 29, 29, 64, 16, jnp.bfloat16),
    (8, 2, True, 21, 21, 32, 32, jnp.float32),
    (8, 2, True, 7, 40, 64, 16, jnp.bfloat16),
    (8, 2, False, 11, 70, 16, 64, jnp.float32),
    (4, 4, True, 33, 47, 16, 16, jnp.float32),
    (4, 4, False, 18, 18, 16, 32, jnp.bfloat16),
]


def np_attention_fwd_bwd(q, k, v, do, causal, scale):
    """Float64 grouped attention and its hand-written backward. Returns o, (dq, dk, dv)."""
    q, k, v, do = (np.asarray(x, np.float64) for x in (q, k, v, do))
    g = q.shape[2] // k.shape[2]
    kr, vr = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, kr) * scale
    if causal:
        t, n = q.shape[1], k.shape[1]
        s = np.where(np.arange(n)[None, :] <= np.arange(t)[:, None] + (n - t), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshd->bthd", p, vr)
    dv = np.einsum("bhts,bthd->bshd", p, do)
    dp = np.einsum("bthd,bshd->bhts", do, vr)
    ds = p * (dp - np.einsum("bthd,bthd->bht", do, o)[..., None])
    dq = np.einsum("bhts,bshd->bthd", ds, kr) * scale
    dk = np.einsum("bhts,bthd->bshd", ds, q) * scale

    def group_sum(x):  # the repeat's transpose: each KV head collects its group's gradients
        return x.reshape(*x.shape[:2], k.shape[2], g, x.shape[-1]).sum(3)

    return o, (dq, group_sum(dk), group_sum(dv))


def _inputs(rng, b, t, s, hq, hkv, d, dtype):
    def draw(*shape):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    return draw(b, t, hq, d), draw(b, s, hkv, d), draw(b, s, hkv, d), draw(b, t, hq, d)


def _close(actual, expected, tol, what):
    actual = np.asarray(actual, np.float64)
    assert np.isfinite(actual).all(), f"{what}: non-finite entries (an unwritten block?)"
    err = np.abs(actual - expected).max() / np.abs(expected).max()
    assert err <= tol, f"{what}: max error {err:.2e} relative to max |ref| exceeds {tol:.0e}"


@pytest.mark.parametrize("hq,hkv,causal,t,s,bq,bk,dtype", CASES)
def test_forward_and_gradients_match_float64(hq, hkv, causal, t, s, bq, bk, dtype):
    rng = np.random.default_rng()
    d = 16
    q, k, v, do = _inputs(rng, 2, t, s, hq, hkv, d, dtype)
    scale = float(rng.uniform(0.1, 0.5))
    f = functools.partial(
        kernels.attention, causal=causal, sm_scale=scale, impl="pallas_interpret", block_q=bq, block_k=bk
    )
    # Interpret mode fills every output buffer with NaN before the kernel runs, so an element
    # a kernel leaves unwritten arrives as NaN and fails _close (see test_unwritten_block_is_caught).
    o, vjp = jax.vjp(f, q, k, v)
    grads = vjp(do)
    assert o.dtype == dtype and all(gr.dtype == dtype for gr in grads)
    ref_o, ref_grads = np_attention_fwd_bwd(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), do.astype(jnp.float32), causal, scale)
    _close(o, ref_o, TOL[dtype], "out")
    for name, a, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        _close(a, r, TOL[dtype] * (2 if dtype == jnp.bfloat16 else 5), name)


def test_backward_blocks_may_differ_from_forward_blocks():
    rng = np.random.default_rng()
    q, k, v, do = _inputs(rng, 1, 25, 40, 8, 2, 32, jnp.float32)
    f = functools.partial(
        kernels.attention, impl="pallas_interpret", block_q=64, block_k=32, block_q_bwd=16, block_k_bwd=16
    )
    o, vjp = jax.vjp(f, q, k, v)
    ref_o, ref_grads = np_attention_fwd_bwd(q, k, v, do, True, 1 / np.sqrt(32))
    _close(o, ref_o, 2e-5, "out")
    for name, a, r in zip(("dq", "dk", "dv"), vjp(do), ref_grads):
        _close(a, r, 1e-4, name)


@pytest.mark.parametrize("call_name", ["gqa_flash_fwd", "gqa_flash_dq", "gqa_flash_dkv"])
def test_unwritten_block_is_caught(monkeypatch, call_name):
    """A launch that never runs its last grid block leaves NaN behind, which the checks above catch."""

    def short_grid_pallas_call(kernel, *, grid, name, **kw):
        if name == call_name:
            grid = (*grid[:-1], grid[-1] - 1)
        return pl.pallas_call(kernel, grid=grid, name=name, **kw)

    monkeypatch.setattr(flash, "pl", types.SimpleNamespace(**{**vars(pl), "pallas_call": short_grid_pallas_call}))
    rng = np.random.default_rng()
    q, k, v, do = _inputs(rng, 1, 40, 40, 4, 2, 16, jnp.float32)
    o, vjp = jax.vjp(functools.partial(kernels.attention, impl="pallas_interpret", block_q=16, block_k=16), q, k, v)
    dq, dk, dv = vjp(do)
    outs = {"gqa_flash_fwd": [o], "gqa_flash_dq": [dq], "gqa_flash_dkv": [dk, dv]}[call_name]
    assert all(np.isnan(np.asarray(x)).any() for x in outs)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("group,t,s,bq,bk", [(1, 37, 37, 16, 16), (4, 13, 50, 16, 32), (2, 7, 40, 64, 16), (3, 30, 30, 32, 16)])
def test_key_range_skips_only_fully_masked_blocks(causal, group, t, s, bq, bk):
    """Blocks before n_full are fully visible to every (real) row, blocks in [n_full, n_end) are
    not, and blocks from n_end on are fully masked: skipping them loses nothing."""
    cfg = flash._Config(causal, 1.0, group, t, s, 16, 16, bq, bk, bq, bk, "interpret")
    rows, cols = np.arange(cfg.rows_padded)[:, None], np.arange(cfg.keys_padded)[None, :]
    visible = np.broadcast_to(cols < s, (cfg.rows_padded, cfg.keys_padded))
    if causal:
        visible = visible & (cols <= rows // group + s - t)
    for i in range(cfg.rows_padded // bq):
        n_full, n_end = (int(x) for x in flash._key_range(cfg, i * bq, bq, bk))
        real = visible[i * bq : min((i + 1) * bq, cfg.rows)]
        blocks = [real[:, j * bk : (j + 1) * bk] for j in range(cfg.keys_padded // bk)]
        assert all(blk.all() for blk in blocks[:n_full])
        assert not any(blk.all() for blk in blocks[n_full:n_end])
        assert not any(blk.any() for blk in blocks[n_end:])
        if causal and n_end:
            assert blocks[n_end - 1].any()  # tight: the last visited block is needed


def test_rejects_bad_blocks_and_cpu_compiled_backend():
    q = jnp.ones((1, 8, 4, 16))
    kv = jnp.ones((1, 8, 2, 16))
    with pytest.raises(ValueError, match="power of two"):
        kernels.attention(q, kv, kv, impl="pallas_interpret", block_q=24)
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="pallas_interpret"):
            kernels.attention(q, kv, kv, impl="pallas")
