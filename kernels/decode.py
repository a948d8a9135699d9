"""Pallas flash-decoding for grouped queries: one token per sequence against a KV cache, split over key chunks.

Same backends as kernels.flash ("triton", "mosaic_tpu", "interpret"), same kernel source.
The grid is (batch, KV head, chunk). Each program takes the G = n_q // n_kv query heads of
one KV group together (one [G, d] @ [d, block_k] product per K block, so every K/V block
is read once per group), walks its chunk of the cache up to the sequence's length, and
writes an unnormalised partial output with its running max and sum. A combine step (XLA,
O(B * n_q * chunks * d)) rescales and adds the partials, so a single long sequence is still
spread over `num_chunks` programs.

The cache is read in place: [B, S, n_kv, d] is viewed as [B, S, n_kv * d] (a free reshape)
and KV head h is the column block h, so decoding never copies or transposes the cache.
That needs S % block_k == 0 (no read past the cache end) and, on TPU, d % 128 == 0 or
n_kv == 1 (a lane-aligned column block); `supported` says whether a shape qualifies.
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

from kernels.flash import BACKENDS, MAX_HEAD_DIM, MIN_BLOCK, _next_pow2, _precision, _round_up, backend_for_platform
from kernels.reference import MASK_VALUE

DEFAULT_BLOCK_K = {"triton": 128, "mosaic_tpu": 512, "interpret": 64}
DEFAULT_NUM_CHUNKS = 16  # enough programs to fill ~100 SMs at batch 8 with 1 KV head
_NT = (((1,), (1,)), ((), ()))


@dataclasses.dataclass(frozen=True)
class _Config:
    scale: float
    group: int
    group_padded: int  # query rows per program: Triton's dot needs >= 16, TPU a sublane tile
    s: int
    head_dim: int
    block_k: int
    chunk: int  # keys per program, a multiple of block_k
    num_chunks: int
    backend: str


def _pick_block_k(s: int, want: int) -> int | None:
    """Largest power of two <= want dividing S (>= MIN_BLOCK), or None."""
    b = want
    while b >= MIN_BLOCK:
        if s % b == 0:
            return b
        b //= 2
    return None


def supported(s: int, num_kv_heads: int, head_dim: int, backend: str, block_k: int | None = None) -> str | None:
    """None if the kernel serves this cache shape on ``backend``, else the reason it does not."""
    want = block_k or DEFAULT_BLOCK_K[backend]
    if _pick_block_k(s, want) is None:
        return f"cache length S={s} has no power-of-two divisor in [{MIN_BLOCK}, {want}]"
    if head_dim > MAX_HEAD_DIM:
        return f"head_dim {head_dim} > {MAX_HEAD_DIM}"
    if backend == "triton" and (head_dim < MIN_BLOCK or head_dim & (head_dim - 1)):
        return f"Triton needs a power-of-two head_dim >= {MIN_BLOCK}, got {head_dim}"
    if backend == "mosaic_tpu" and head_dim % 128 and num_kv_heads > 1:
        return f"Mosaic TPU needs head_dim % 128 == 0 to read one KV head's columns, got {head_dim}"
    return None


def _make_config(q, k_cache, *, sm_scale, backend, block_k, num_chunks) -> _Config:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} not in {BACKENDS}")
    _, n_q, d = q.shape
    _, s, n_kv, _ = k_cache.shape
    reason = supported(s, n_kv, d, backend, block_k)
    if reason:
        raise ValueError(f"decode kernel cannot serve this cache: {reason}")
    if block_k is not None and (block_k < MIN_BLOCK or block_k & (block_k - 1)):
        raise ValueError(f"block_k={block_k} must be a power of two >= {MIN_BLOCK}")
    bk = _pick_block_k(s, block_k or DEFAULT_BLOCK_K[backend])
    n_blocks = s // bk
    chunks = max(1, min(num_chunks or DEFAULT_NUM_CHUNKS, n_blocks))
    # Triton block shapes must be powers of two, so the chunk is a power-of-two count of blocks.
    chunk = bk * _next_pow2(-(-n_blocks // chunks))
    chunks = -(-s // chunk)
    group = n_q // n_kv
    gp = max(MIN_BLOCK, _next_pow2(group)) if backend == "triton" else _round_up(group, 8)
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    return _Config(scale, group, gp, s, d, bk, chunk, chunks, backend)


def _decode_kernel(len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, cfg: _Config):
    b, c = pl.program_id(0), pl.program_id(2)
    bk = cfg.block_k
    start = c * cfg.chunk
    n_valid = jnp.clip(len_ref[b] - start, 0, cfg.chunk)  # keys of this chunk inside the sequence
    q = q_ref[...]
    prec = _precision(q.dtype)

    def step(j, carry, masked):
        m, l, acc = carry
        col0 = pl.multiple_of(j * bk, bk)
        k = k_ref[pl.ds(col0, bk), :]
        v = v_ref[pl.ds(col0, bk), :]
        s = lax.dot_general(q, k, _NT, precision=prec, preferred_element_type=jnp.float32) * cfg.scale
        if masked:
            cols = col0 + lax.broadcasted_iota(jnp.int32, s.shape, 1)
            s = jnp.where(cols < n_valid, s, MASK_VALUE)
            # Cache rows past the length may hold anything (NaN included): 0 * NaN would leak.
            keep = col0 + lax.broadcasted_iota(jnp.int32, v.shape, 0) < n_valid
            v = jnp.where(keep, v, jnp.zeros_like(v))
        m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
        p = jnp.exp(s - m_new)
        alpha = jnp.exp(m - m_new)
        l = alpha * l + jnp.sum(p, axis=1, keepdims=True)
        acc = alpha * acc + lax.dot(p.astype(v.dtype), v, precision=prec, preferred_element_type=jnp.float32)
        return m_new, l, acc

    gp = q.shape[0]
    # Finite start so an empty chunk (past the length) gets weight exp(MASK - max) = 0 in the combine.
    carry = (jnp.full((gp, 1), MASK_VALUE, jnp.float32), jnp.zeros((gp, 1), jnp.float32), jnp.zeros(q.shape, jnp.float32))
    n_full = lax.div(n_valid, bk)
    carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
    # At most one partial block; every visited block holds a valid key, so m is real after it.
    m, l, acc = lax.fori_loop(n_full, lax.div(n_valid + bk - 1, bk), functools.partial(step, masked=True), carry)
    o_ref[...] = acc
    m_ref[...] = m
    l_ref[...] = l


def _lengths_spec(backend: str) -> pl.BlockSpec:
    # A per-sequence scalar read with a dynamic index: TPU keeps scalars in SMEM.
    if backend == "mosaic_tpu":
        return pl.BlockSpec(memory_space=pltpu.SMEM)
    return pl.BlockSpec(memory_space=pl.ANY)


def _compiler_params(cfg: _Config):
    if cfg.backend == "triton":
        return pltriton.CompilerParams(num_warps=4, num_stages=2)
    if cfg.backend == "mosaic_tpu":
        return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))
    return None


def decode_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    sm_scale: float | None = None,
    backend: str | None = None,
    block_k: int | None = None,
    num_chunks: int | None = None,
) -> jax.Array:
    """q [B, n_q, d], caches [B, S, n_kv, d], lengths [B] (1..S) -> [B, n_q, d].

    ``block_k`` (keys per inner step, a power of two dividing S; default per backend,
    halved until it divides S) and ``num_chunks`` (parallel splits of the cache, default
    DEFAULT_NUM_CHUNKS) are tuning knobs; neither changes the result beyond rounding.
    """
    backend = backend or backend_for_platform(jax.default_backend())
    cfg = _make_config(q, k_cache, sm_scale=sm_scale, backend=backend, block_k=block_k, num_chunks=num_chunks)
    bsz, n_q, d = q.shape
    _, s, n_kv, _ = k_cache.shape
    g, gp = cfg.group, cfg.group_padded
    qg = q.reshape(bsz, n_kv, g, d)
    if gp != g:
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, gp - g), (0, 0)))
    kf = k_cache.reshape(bsz, s, n_kv * d)
    vf = v_cache.reshape(bsz, s, n_kv * d)
    chunks = cfg.num_chunks
    part = lambda n: pl.BlockSpec((None, None, None, gp, n), lambda b, h, c: (b, h, c, 0, 0))  # noqa: E731
    o, m, l = pl.pallas_call(
        functools.partial(_decode_kernel, cfg=cfg),
        grid=(bsz, n_kv, chunks),
        in_specs=[
            _lengths_spec(backend),
            pl.BlockSpec((None, None, gp, d), lambda b, h, c: (b, h, 0, 0)),
            pl.BlockSpec((None, cfg.chunk, d), lambda b, h, c: (b, c, h)),
            pl.BlockSpec((None, cfg.chunk, d), lambda b, h, c: (b, c, h)),
        ],
        out_specs=[part(d), part(1), part(1)],
        out_shape=[
            jax.ShapeDtypeStruct((bsz, n_kv, chunks, gp, d), jnp.float32),
            jax.ShapeDtypeStruct((bsz, n_kv, chunks, gp, 1), jnp.float32),
            jax.ShapeDtypeStruct((bsz, n_kv, chunks, gp, 1), jnp.float32),
        ],
        compiler_params=_compiler_params(cfg),
        interpret=backend == "interpret",
        name="gqa_flash_decode",
    )(lengths.astype(jnp.int32), qg, kf, vf)
    # Combine: rescale each chunk's partial sums to the global max, then normalise once.
    m_all = jnp.max(m, axis=2, keepdims=True)
    w = jnp.exp(m - m_all)
    out = jnp.sum(w * o, axis=2) / jnp.sum(w * l, axis=2)
    return out[:, :, :g].reshape(bsz, n_q, d).astype(q.dtype)
