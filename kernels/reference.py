"""XLA reference attention: grouped-query einsums that never repeat K/V; the fallback and test oracle."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Finite rather than -inf so a fully masked row yields zeros instead of NaNs in gradients.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _scale(sm_scale: float | None, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale


def _group_queries(q: jax.Array, num_kv_heads: int) -> jax.Array:
    """[..., n_q, d] -> [..., n_kv, n_q // n_kv, d]; query head h reads KV head h // group."""
    *lead, num_q_heads, head_dim = q.shape
    return q.reshape(*lead, num_kv_heads, num_q_heads // num_kv_heads, head_dim)


def attention_xla(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = True,
    sm_scale: float | None = None,
) -> jax.Array:
    """Dense grouped attention. q [B, T, n_q, d], k/v [B, S, n_kv, d] -> [B, T, n_q, d].

    With causal=True and T < S, the queries are the last T positions of the S keys
    (bottom-right alignment), which is what prefill after a cached prefix needs.
    Scores and softmax are in float32 whatever the input dtype.
    """
    _, t, _, head_dim = q.shape
    s = k.shape[1]
    qg = _group_queries(q, k.shape[2])
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * _scale(sm_scale, head_dim)
    if causal:
        q_pos = jnp.arange(t)[:, None] + (s - t)
        k_pos = jnp.arange(s)[None, :]
        scores = jnp.where(k_pos <= q_pos, scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(q.shape).astype(q.dtype)


def decode_attention_xla(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    sm_scale: float | None = None,
) -> jax.Array:
    """One query token per sequence against a cache. q [B, n_q, d], caches [B, S, n_kv, d],
    lengths [B] (valid cache entries, >= 1) -> [B, n_q, d]."""
    head_dim = q.shape[-1]
    qg = _group_queries(q, k_cache.shape[2])
    scores = jnp.einsum("bkgd,bskd->bkgs", qg, k_cache, preferred_element_type=jnp.float32)
    scores = scores * _scale(sm_scale, head_dim)
    valid = jnp.arange(k_cache.shape[1])[None, :] < lengths[:, None]
    scores = jnp.where(valid[:, None, None, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgs,bskd->bkgd", probs.astype(v_cache.dtype), v_cache, preferred_element_type=jnp.float32)
    return out.reshape(q.shape).astype(q.dtype)
