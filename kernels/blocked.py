"""Memory-efficient grouped-query attention in plain XLA: flash attention's blocking with lax loops, for CPU at long context.

Queries are processed in blocks of ``block_q`` tokens (lax.map) and, inside, keys in blocks
of ``block_k`` (fori_loop with an online softmax), so the largest temporary is one
[B, n_kv, G, block_q, block_k] score tile instead of the [B, n_q, T, S] score matrix. Key
blocks wholly above the causal diagonal are skipped (the loop bound depends on the query
block), so causal attention costs half the FLOPs, as in the Pallas kernels.

Differentiable through jax.custom_vjp with a blocked backward (dQ by query block, dK/dV by
key block, softmax recomputed from the saved log-sum-exp). Autodiff through the loops
would not do: a fori_loop with a data-dependent trip count cannot be reverse-differentiated,
and a fixed-length scan would save every step's probability tile, i.e. T * S floats again.
Semantics equal kernels.reference.attention_xla, causal bottom-right alignment included.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from kernels.reference import MASK_VALUE

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512


@dataclasses.dataclass(frozen=True)
class _Config:
    causal: bool
    scale: float
    t: int
    s: int
    block_q: int
    block_k: int

    @property
    def n_q_blocks(self) -> int:
        return -(-self.t // self.block_q)

    @property
    def n_k_blocks(self) -> int:
        return -(-self.s // self.block_k)

    def key_end(self, i):
        """Key blocks needed by query block i (later ones are wholly masked)."""
        if not self.causal:
            return self.n_k_blocks
        last_pos = (i + 1) * self.block_q - 1 + self.s - self.t
        return jnp.minimum(last_pos // self.block_k + 1, self.n_k_blocks)

    def query_start(self, j):
        """First query block that sees anything of key block j."""
        if not self.causal:
            return 0
        return jnp.maximum(j * self.block_k - (self.s - self.t), 0) // self.block_q

    def visible(self, i, j):
        """[block_q, block_k] mask for query block i and key block j (bounds and causality)."""
        t_pos = i * self.block_q + jnp.arange(self.block_q)[:, None]
        k_pos = j * self.block_k + jnp.arange(self.block_k)[None, :]
        ok = k_pos < self.s
        if self.causal:
            ok = ok & (k_pos <= t_pos + (self.s - self.t))
        return ok


def _slice(x, axis: int, start, size: int):
    return lax.dynamic_slice_in_dim(x, start * size, size, axis=axis)


def _scores(cfg: _Config, qb, kb, i, j):
    s = jnp.einsum("bkgtd,bksd->bkgts", qb, kb, preferred_element_type=jnp.float32) * cfg.scale
    return jnp.where(cfg.visible(i, j), s, MASK_VALUE)


def _layout(cfg: _Config, q, k, v):
    """q -> [B, n_kv, G, Tp, d]; k, v -> [B, n_kv, Sp, d]; zero padded to whole blocks."""
    b, t, n_q, d = q.shape
    n_kv = k.shape[2]
    qg = q.reshape(b, t, n_kv, n_q // n_kv, d).transpose(0, 2, 3, 1, 4)
    qg = jnp.pad(qg, ((0, 0),) * 3 + ((0, cfg.n_q_blocks * cfg.block_q - t), (0, 0)))
    pad_k = ((0, 0), (0, 0), (0, cfg.n_k_blocks * cfg.block_k - cfg.s), (0, 0))
    return qg, jnp.pad(k.transpose(0, 2, 1, 3), pad_k), jnp.pad(v.transpose(0, 2, 1, 3), pad_k)


def _unlayout_q(cfg: _Config, x, shape):
    """[B, n_kv, G, Tp, d] -> [B, T, n_q, d]."""
    return x[:, :, :, : cfg.t].transpose(0, 3, 1, 2, 4).reshape(shape)


def _forward(cfg: _Config, q, k, v):
    qg, kt, vt = _layout(cfg, q, k, v)

    def query_block(i):
        qb = _slice(qg, 3, i, cfg.block_q)

        def step(j, carry):
            m, l, acc = carry
            vb = _slice(vt, 2, j, cfg.block_k)
            s = _scores(cfg, qb, _slice(kt, 2, j, cfg.block_k), i, j)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            alpha = jnp.exp(m - m_new)
            l = alpha * l + p.sum(-1)
            pv = jnp.einsum("bkgts,bksd->bkgtd", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
            return m_new, l, alpha[..., None] * acc + pv

        stats = qb.shape[:-1]
        init = (jnp.full(stats, -jnp.inf, jnp.float32), jnp.zeros(stats, jnp.float32), jnp.zeros(qb.shape, jnp.float32))
        # Key block 0 holds key 0, visible to every query, so no row stays at -inf.
        m, l, acc = lax.fori_loop(0, cfg.key_end(i), step, init)
        return (acc / l[..., None]).astype(q.dtype), m + jnp.log(l)

    o, lse = lax.map(query_block, jnp.arange(cfg.n_q_blocks))
    # [nq, B, n_kv, G, bq, ...] -> [B, n_kv, G, Tp, ...]
    o = jnp.moveaxis(o, 0, 3).reshape(qg.shape)
    lse = jnp.moveaxis(lse, 0, 3).reshape(qg.shape[:-1])
    return _unlayout_q(cfg, o, q.shape), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blocked(cfg: _Config, q, k, v):
    return _forward(cfg, q, k, v)[0]


def _blocked_fwd(cfg: _Config, q, k, v):
    o, lse = _forward(cfg, q, k, v)
    return o, (q, k, v, o, lse)


def _blocked_bwd(cfg: _Config, res, do):
    q, k, v, o, lse = res
    qg, kt, vt = _layout(cfg, q, k, v)
    dog = _layout(cfg, do.astype(q.dtype), k, v)[0]
    delta = _layout(cfg, jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), -1, keepdims=True), k, v)[0][..., 0]

    def probs(i, j, qb, kb, lse_b):
        return jnp.exp(_scores(cfg, qb, kb, i, j) - lse_b[..., None])

    def dq_block(i):
        qb, dob = _slice(qg, 3, i, cfg.block_q), _slice(dog, 3, i, cfg.block_q)
        lse_b, delta_b = _slice(lse, 3, i, cfg.block_q), _slice(delta, 3, i, cfg.block_q)

        def step(j, dq):
            kb, vb = _slice(kt, 2, j, cfg.block_k), _slice(vt, 2, j, cfg.block_k)
            p = probs(i, j, qb, kb, lse_b)
            dp = jnp.einsum("bkgtd,bksd->bkgts", dob, vb, preferred_element_type=jnp.float32)
            ds = (p * (dp - delta_b[..., None])).astype(k.dtype)
            return dq + jnp.einsum("bkgts,bksd->bkgtd", ds, kb, preferred_element_type=jnp.float32)

        dq = lax.fori_loop(0, cfg.key_end(i), step, jnp.zeros(qb.shape, jnp.float32))
        return (dq * cfg.scale).astype(q.dtype)

    def dkv_block(j):
        kb, vb = _slice(kt, 2, j, cfg.block_k), _slice(vt, 2, j, cfg.block_k)

        def step(i, carry):
            dk, dv = carry
            qb, dob = _slice(qg, 3, i, cfg.block_q), _slice(dog, 3, i, cfg.block_q)
            p = probs(i, j, qb, kb, _slice(lse, 3, i, cfg.block_q))
            dv = dv + jnp.einsum("bkgts,bkgtd->bksd", p.astype(do.dtype), dob, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bkgtd,bksd->bkgts", dob, vb, preferred_element_type=jnp.float32)
            ds = (p * (dp - _slice(delta, 3, i, cfg.block_q)[..., None])).astype(q.dtype)
            # Summing over g here is where the group's query heads add into one KV head.
            dk = dk + jnp.einsum("bkgts,bkgtd->bksd", ds, qb, preferred_element_type=jnp.float32)
            return dk, dv

        zeros = jnp.zeros(kb.shape, jnp.float32)
        dk, dv = lax.fori_loop(cfg.query_start(j), cfg.n_q_blocks, step, (zeros, zeros))
        return (dk * cfg.scale).astype(k.dtype), dv.astype(v.dtype)

    dq = jnp.moveaxis(lax.map(dq_block, jnp.arange(cfg.n_q_blocks)), 0, 3).reshape(qg.shape)
    dk, dv = lax.map(dkv_block, jnp.arange(cfg.n_k_blocks))

    def keys_back(x):  # [nk, B, n_kv, bk, d] -> [B, S, n_kv, d]
        return jnp.moveaxis(x, 0, 2).reshape(kt.shape)[:, :, : cfg.s].transpose(0, 2, 1, 3)

    return _unlayout_q(cfg, dq, q.shape), keys_back(dk), keys_back(dv)


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def blocked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = True,
    sm_scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """Grouped-query attention without the T x S score matrix. q [B, T, n_q, d], k/v [B, S, n_kv, d].

    Extra memory is O(B * n_q * block_q * block_k) for a score tile plus O(T * d) for
    outputs and statistics. Block sizes are any positive ints (clamped to T and S).
    """
    t, s, d = q.shape[1], k.shape[1], q.shape[3]
    if causal and t > s:
        raise ValueError(f"causal attention needs T <= S; got T={t}, S={s}")
    bq = min(block_q or DEFAULT_BLOCK_Q, t)
    bk = min(block_k or DEFAULT_BLOCK_K, s)
    if bq < 1 or bk < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
    scale = 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
    return _blocked(_Config(causal, scale, t, s, bq, bk), q, k, v)
