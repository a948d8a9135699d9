"""Pallas flash attention for grouped queries: online-softmax forward, dQ and dK/dV backward kernels.

One kernel source serves three Pallas backends, picked by ``backend``: "triton" (GPU),
"mosaic_tpu" (TPU) and "interpret" (any platform, for tests on CPU). Only the compiler
parameters differ between them. On GPU we lower through Triton, not Mosaic GPU: the
Triton backend takes ordinary jnp code over blocks (dot, exp, where, fori_loop), which is
also what Mosaic TPU takes, so the same kernel bodies lower to both, and it runs on
Ampere as well as Hopper. Mosaic GPU wants warpgroup-level code (explicit SMEM pipelines,
wgmma) that would be a second kernel, Hopper only. The price: jax.export does not list the
Triton custom call as stable, so a serialized GPU artifact needs
``DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")`` (plain jit is unaffected).

Layout. Queries are regrouped to [B, n_kv, T * G, d] (G = n_q // n_kv) with row r holding
token r // G of head r % G, and K/V to [B, n_kv, S, d]. A query block therefore covers all
G heads of a KV group for block_q // G tokens, so each K/V block is read once per group
and dK/dV sum over the group inside one program, without atomics. Both axes are padded
to whole blocks in the wrapper (zeros) and the padded keys are masked by bounds.

Causal masking is bottom-right aligned (query t sits at key position S - T + t), equal to
kernels.reference.attention_xla; key blocks wholly above the diagonal are never visited,
and only blocks that straddle the diagonal or the padded end pay for a mask.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from kernels.reference import MASK_VALUE

BACKENDS = ("triton", "mosaic_tpu", "interpret")
# (block_q rows, block_k keys) forward and backward. Triton wants powers of two and fits
# 64x64 tiles in shared memory at d_h=128; Mosaic TPU wants 128-lane multiples on the key axis.
DEFAULT_BLOCKS = {"triton": (64, 64), "mosaic_tpu": (128, 128), "interpret": (64, 64)}
MIN_BLOCK = 16  # Triton's dot needs every dimension >= 16; also a bf16 sublane tile on TPU.
MAX_HEAD_DIM = 256
_NT = (((1,), (1,)), ((), ()))  # a @ b.T without materialising the transpose


def backend_for_platform(platform: str) -> str:
    """The Pallas backend that serves a jax platform name ("gpu"/"cuda", "tpu")."""
    if platform in ("gpu", "cuda", "rocm"):
        return "triton"
    if platform == "tpu":
        return "mosaic_tpu"
    raise ValueError(f"no compiled Pallas backend for platform {platform!r}; use backend='interpret'")


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _check_block(name: str, value: int) -> None:
    if value < MIN_BLOCK or value & (value - 1):
        raise ValueError(f"{name}={value} must be a power of two >= {MIN_BLOCK}")


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static description of one call: shapes after regrouping, blocks, backend."""

    causal: bool
    scale: float
    group: int  # G = n_q // n_kv
    t: int  # query tokens
    s: int  # keys
    head_dim: int  # as given (d_h)
    head_dim_padded: int  # Triton needs a power of two
    block_q: int
    block_k: int
    block_q_bwd: int
    block_k_bwd: int
    backend: str

    @property
    def rows(self) -> int:
        return self.t * self.group

    @property
    def rows_padded(self) -> int:
        return _round_up(self.rows, max(self.block_q, self.block_q_bwd))

    @property
    def keys_padded(self) -> int:
        return _round_up(self.s, max(self.block_k, self.block_k_bwd))

    @property
    def offset(self) -> int:
        return self.s - self.t


def _make_config(q, k, *, causal, sm_scale, backend, block_q, block_k, block_q_bwd, block_k_bwd) -> _Config:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} not in {BACKENDS}")
    _, t, n_q, d = q.shape
    s, n_kv = k.shape[1], k.shape[2]
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {d} > {MAX_HEAD_DIM} is not supported by the Pallas kernels")
    dq_, dk_ = DEFAULT_BLOCKS[backend]
    blocks = {
        "block_q": block_q or dq_,
        "block_k": block_k or dk_,
        "block_q_bwd": block_q_bwd or block_q or dq_,
        "block_k_bwd": block_k_bwd or block_k or dk_,
    }
    for name, value in blocks.items():
        _check_block(name, value)
    rows = t * (n_q // n_kv)
    # Never use a block larger than the (power-of-two rounded) axis it tiles.
    for name in ("block_q", "block_q_bwd"):
        blocks[name] = min(blocks[name], max(MIN_BLOCK, _next_pow2(rows)))
    for name in ("block_k", "block_k_bwd"):
        blocks[name] = min(blocks[name], max(MIN_BLOCK, _next_pow2(s)))
    d_pad = max(MIN_BLOCK, _next_pow2(d)) if backend == "triton" else d
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    return _Config(causal, scale, n_q // n_kv, t, s, d, d_pad, backend=backend, **blocks)


def _compiler_params(cfg: _Config, num_grid_dims: int):
    if cfg.backend == "triton":
        return pltriton.CompilerParams(num_warps=4 if cfg.head_dim_padded <= 64 else 8, num_stages=2)
    if cfg.backend == "mosaic_tpu":
        return pltpu.CompilerParams(dimension_semantics=("parallel",) * num_grid_dims, vmem_limit_bytes=_vmem_bytes(cfg))
    return None


def _vmem_bytes(cfg: _Config) -> int:
    """VMEM a TPU program needs: the whole K/V of one KV head (double-buffered) plus tiles.

    The key loop runs inside the kernel over a resident K/V, which is what lets Triton
    and Mosaic share it; it bounds S on TPU (about 48K keys at d_h=128 in bf16)."""
    kv = 2 * 2 * cfg.keys_padded * cfg.head_dim * 4
    tiles = 8 * max(cfg.block_q, cfg.block_q_bwd) * max(cfg.block_k, cfg.block_k_bwd) * 4
    return int(min(max(32 << 20, 1.5 * (kv + tiles)), 100 << 20))


def tpu_fits(s: int, head_dim: int) -> bool:
    """Whether the whole K/V of one KV head fits the VMEM limit the TPU kernels ask for."""
    return 2 * 2 * _round_up(s, 128) * head_dim * 4 * 1.5 < (100 << 20)


def _precision(dtype) -> lax.Precision:
    # f32 inputs should not silently drop to TF32 on GPU; bf16 is exact at DEFAULT.
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT


# ---------------------------------------------------------------------------------------
# Kernel bodies (shared by all backends)


def _visible(cfg: _Config, row0, col0, n_rows: int, n_cols: int):
    """[n_rows, n_cols] bool: key col0+j is visible to query row row0+i (bounds and causality)."""
    rows = row0 + lax.broadcasted_iota(jnp.int32, (n_rows, n_cols), 0)
    cols = col0 + lax.broadcasted_iota(jnp.int32, (n_rows, n_cols), 1)
    ok = cols < cfg.s
    if cfg.causal:
        # col <= row // G + offset  <=>  G * (col - offset) <= row: no vector division needed.
        ok = ok & (cfg.group * (cols - cfg.offset) <= rows)
    return ok


def _key_range(cfg: _Config, row0, block_q: int, block_k: int):
    """Key blocks [0, n_full) need no mask for rows [row0, row0+block_q); [n_full, n_end) do;
    blocks from n_end on are fully masked and skipped."""
    n_blocks = cfg.keys_padded // block_k
    n_unpadded = cfg.s // block_k
    if not cfg.causal:
        return n_unpadded, n_blocks
    # lax.div (truncating) on non-negative scalars: Mosaic cannot lower floor division's sign
    # handling without a TPU attached.
    first_pos = lax.div(row0, cfg.group) + cfg.offset
    last_pos = lax.div(row0 + block_q - 1, cfg.group) + cfg.offset
    n_full = jnp.minimum(lax.div(first_pos + 1, block_k), n_unpadded)
    n_end = jnp.minimum(lax.div(last_pos + block_k, block_k), n_blocks)
    return n_full, n_end


def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, cfg: _Config):
    bq, bk = cfg.block_q, cfg.block_k
    row0 = pl.program_id(2) * bq
    q = q_ref[...]
    prec = _precision(q.dtype)

    def step(j, carry, masked):
        m, l, acc = carry
        col0 = pl.multiple_of(j * bk, bk)
        k = k_ref[pl.ds(col0, bk), :]
        v = v_ref[pl.ds(col0, bk), :]
        s = lax.dot_general(q, k, _NT, precision=prec, preferred_element_type=jnp.float32) * cfg.scale
        if masked:
            s = jnp.where(_visible(cfg, row0, col0, bq, bk), s, MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
        p = jnp.exp(s - m_new)
        alpha = jnp.exp(m - m_new)
        l = alpha * l + jnp.sum(p, axis=1, keepdims=True)
        acc = alpha * acc + lax.dot(p.astype(v.dtype), v, precision=prec, preferred_element_type=jnp.float32)
        return m_new, l, acc

    n_full, n_end = _key_range(cfg, row0, bq, bk)
    carry = (
        jnp.full((bq, 1), -jnp.inf, jnp.float32),
        jnp.zeros((bq, 1), jnp.float32),
        jnp.zeros((bq, q.shape[1]), jnp.float32),
    )
    # Key block 0 holds key 0, visible to every query, so no row is still at -inf after it.
    carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
    m, l, acc = lax.fori_loop(n_full, n_end, functools.partial(step, masked=True), carry)
    o_ref[...] = (acc / l).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, cfg: _Config):
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    row0 = pl.program_id(2) * bq
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    prec = _precision(q.dtype)

    def step(j, dq, masked):
        col0 = pl.multiple_of(j * bk, bk)
        k = k_ref[pl.ds(col0, bk), :]
        v = v_ref[pl.ds(col0, bk), :]
        s = lax.dot_general(q, k, _NT, precision=prec, preferred_element_type=jnp.float32) * cfg.scale
        if masked:
            s = jnp.where(_visible(cfg, row0, col0, bq, bk), s, MASK_VALUE)
        p = jnp.exp(s - lse)
        dp = lax.dot_general(do, v, _NT, precision=prec, preferred_element_type=jnp.float32)
        ds = p * (dp - delta)
        return dq + lax.dot(ds.astype(k.dtype), k, precision=prec, preferred_element_type=jnp.float32)

    n_full, n_end = _key_range(cfg, row0, bq, bk)
    dq = jnp.zeros(q.shape, jnp.float32)
    dq = lax.fori_loop(0, n_full, functools.partial(step, masked=False), dq)
    dq = lax.fori_loop(n_full, n_end, functools.partial(step, masked=True), dq)
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, cfg: _Config):
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    j = pl.program_id(2)
    col0 = j * bk
    k, v = k_ref[...], v_ref[...]
    prec = _precision(k.dtype)
    n_q_blocks = cfg.rows_padded // bq

    def step(i, carry, masked):
        dk, dv = carry
        row0 = pl.multiple_of(i * bq, bq)
        q = q_ref[pl.ds(row0, bq), :]
        do = do_ref[pl.ds(row0, bq), :]
        s = lax.dot_general(q, k, _NT, precision=prec, preferred_element_type=jnp.float32) * cfg.scale
        if masked:
            s = jnp.where(_visible(cfg, row0, col0, bq, bk), s, MASK_VALUE)
        p = jnp.exp(s - lse_ref[pl.ds(row0, bq), :])
        dv = dv + lax.dot(p.T.astype(do.dtype), do, precision=prec, preferred_element_type=jnp.float32)
        dp = lax.dot_general(do, v, _NT, precision=prec, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_ref[pl.ds(row0, bq), :])
        dk = dk + lax.dot(ds.T.astype(q.dtype), q, precision=prec, preferred_element_type=jnp.float32)
        return dk, dv

    # Padded query rows need no mask: their dO is zero, so they add nothing to dK or dV.
    if cfg.causal:
        # Rows whose query position is below col0 see nothing of this block; rows at or past
        # the block's last key see all of it (when the block holds no padded key).
        i_lo = lax.div(jnp.maximum(cfg.group * (col0 - cfg.offset), 0), bq)
        i_full = lax.div(jnp.maximum(cfg.group * (col0 + bk - 1 - cfg.offset), 0) + bq - 1, bq)
        i_full = jnp.minimum(i_full, n_q_blocks)
    else:
        i_lo, i_full = 0, 0
    i_full = jnp.where(col0 + bk <= cfg.s, i_full, n_q_blocks)
    carry = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    carry = lax.fori_loop(i_lo, i_full, functools.partial(step, masked=True), carry)
    dk, dv = lax.fori_loop(i_full, n_q_blocks, functools.partial(step, masked=False), carry)
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# ---------------------------------------------------------------------------------------
# pallas_call wrappers on the regrouped layout: q/o [B, n_kv, Mp, d], k/v [B, n_kv, Sp, d],
# lse/delta [B, n_kv, Mp, 1] float32 (a trailing unit axis keeps every block 2-D).


def _whole(n: int, d: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, n, d), lambda b, h, i: (b, h, 0, 0))


def _tile(n: int, d: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, n, d), lambda b, h, i: (b, h, i, 0))


def _fwd_call(cfg: _Config, qt, kt, vt):
    b, h, mp, d = qt.shape
    sp = kt.shape[2]
    return pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg),
        grid=(b, h, mp // cfg.block_q),
        in_specs=[_tile(cfg.block_q, d), _whole(sp, d), _whole(sp, d)],
        out_specs=[_tile(cfg.block_q, d), _tile(cfg.block_q, 1)],
        out_shape=[jax.ShapeDtypeStruct(qt.shape, qt.dtype), jax.ShapeDtypeStruct((b, h, mp, 1), jnp.float32)],
        compiler_params=_compiler_params(cfg, 3),
        interpret=cfg.backend == "interpret",
        name="gqa_flash_fwd",
    )(qt, kt, vt)


def _dq_call(cfg: _Config, qt, kt, vt, dot, lse, delta):
    b, h, mp, d = qt.shape
    sp = kt.shape[2]
    bq = cfg.block_q_bwd
    return pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg),
        grid=(b, h, mp // bq),
        in_specs=[_tile(bq, d), _whole(sp, d), _whole(sp, d), _tile(bq, d), _tile(bq, 1), _tile(bq, 1)],
        out_specs=_tile(bq, d),
        out_shape=jax.ShapeDtypeStruct(qt.shape, qt.dtype),
        compiler_params=_compiler_params(cfg, 3),
        interpret=cfg.backend == "interpret",
        name="gqa_flash_dq",
    )(qt, kt, vt, dot, lse, delta)


def _dkv_call(cfg: _Config, qt, kt, vt, dot, lse, delta):
    b, h, mp, d = qt.shape
    sp = kt.shape[2]
    bk = cfg.block_k_bwd
    return pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg),
        grid=(b, h, sp // bk),
        in_specs=[_whole(mp, d), _tile(bk, d), _tile(bk, d), _whole(mp, d), _whole(mp, 1), _whole(mp, 1)],
        out_specs=[_tile(bk, d), _tile(bk, d)],
        out_shape=[jax.ShapeDtypeStruct(kt.shape, kt.dtype), jax.ShapeDtypeStruct(vt.shape, vt.dtype)],
        compiler_params=_compiler_params(cfg, 3),
        interpret=cfg.backend == "interpret",
        name="gqa_flash_dkv",
    )(qt, kt, vt, dot, lse, delta)


# ---------------------------------------------------------------------------------------
# Layout changes and the custom VJP


def _rows_layout(cfg: _Config, x, n_kv: int):
    """[B, T, n_q, d] -> [B, n_kv, Mp, d_pad] with row t * G + g = token t, head g of the group."""
    b, t, _, d = x.shape
    x = x.reshape(b, t, n_kv, cfg.group, d).transpose(0, 2, 1, 3, 4).reshape(b, n_kv, t * cfg.group, d)
    return jnp.pad(x, ((0, 0), (0, 0), (0, cfg.rows_padded - cfg.rows), (0, cfg.head_dim_padded - d)))


def _rows_unlayout(cfg: _Config, x, n_q: int):
    b, n_kv = x.shape[:2]
    x = x[:, :, : cfg.rows, : cfg.head_dim].reshape(b, n_kv, cfg.t, cfg.group, cfg.head_dim)
    return x.transpose(0, 2, 1, 3, 4).reshape(b, cfg.t, n_q, cfg.head_dim)


def _keys_layout(cfg: _Config, x):
    """[B, S, n_kv, d] -> [B, n_kv, Sp, d_pad], zero padded (padded keys are masked by bounds)."""
    x = x.transpose(0, 2, 1, 3)
    return jnp.pad(x, ((0, 0), (0, 0), (0, cfg.keys_padded - cfg.s), (0, cfg.head_dim_padded - cfg.head_dim)))


def _keys_unlayout(cfg: _Config, x):
    return x[:, :, : cfg.s, : cfg.head_dim].transpose(0, 2, 1, 3)


def _forward(cfg: _Config, q, k, v):
    n_kv = k.shape[2]
    ot, lse = _fwd_call(cfg, _rows_layout(cfg, q, n_kv), _keys_layout(cfg, k), _keys_layout(cfg, v))
    return _rows_unlayout(cfg, ot, q.shape[2]), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg: _Config, q, k, v):
    return _forward(cfg, q, k, v)[0]


def _flash_fwd(cfg: _Config, q, k, v):
    o, lse = _forward(cfg, q, k, v)
    # Keep the caller's layout (which autodiff holds anyway) rather than padded copies.
    return o, (q, k, v, o, lse)


def _flash_bwd(cfg: _Config, res, do):
    q, k, v, o, lse = res
    n_kv = k.shape[2]
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
    delta = _rows_layout(dataclasses.replace(cfg, head_dim=1, head_dim_padded=1), delta, n_kv)
    qt, kt, vt = _rows_layout(cfg, q, n_kv), _keys_layout(cfg, k), _keys_layout(cfg, v)
    dot = _rows_layout(cfg, do.astype(q.dtype), n_kv)
    dqt = _dq_call(cfg, qt, kt, vt, dot, lse, delta)
    dkt, dvt = _dkv_call(cfg, qt, kt, vt, dot, lse, delta)
    return _rows_unlayout(cfg, dqt, q.shape[2]), _keys_unlayout(cfg, dkt), _keys_unlayout(cfg, dvt)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = True,
    sm_scale: float | None = None,
    backend: str | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    block_q_bwd: int | None = None,
    block_k_bwd: int | None = None,
) -> jax.Array:
    """Grouped-query flash attention, differentiable. q [B, T, n_q, d], k/v [B, S, n_kv, d].

    ``backend`` is one of BACKENDS (None: from jax.default_backend()). Block sizes are
    powers of two >= 16 with per-backend defaults (DEFAULT_BLOCKS); ``block_q`` counts rows
    of the regrouped query axis, i.e. (token, head-in-group) pairs, so a block covers
    block_q // G tokens of every head in the group. T and S need not be block multiples.
    """
    backend = backend or backend_for_platform(jax.default_backend())
    if causal and q.shape[1] > k.shape[1]:
        raise ValueError(f"causal attention needs T <= S; got T={q.shape[1]}, S={k.shape[1]}")
    cfg = _make_config(
        q,
        k,
        causal=causal,
        sm_scale=sm_scale,
        backend=backend,
        block_q=block_q,
        block_k=block_k,
        block_q_bwd=block_q_bwd,
        block_k_bwd=block_k_bwd,
    )
    return _flash(cfg, q, k, v)
