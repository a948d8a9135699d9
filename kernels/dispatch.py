"""Public attention entry points: check shapes, pick an implementation per backend, call it."""

from __future__ import annotations

import logging
from typing import Callable

import jax

from kernels import reference

log = logging.getLogger(__name__)

# impl name -> function. Accelerator kernels register here as they land; "xla" serves everywhere.
ATTENTION_IMPLS: dict[str, Callable[..., jax.Array]] = {"xla": reference.attention_xla}
DECODE_IMPLS: dict[str, Callable[..., jax.Array]] = {"xla": reference.decode_attention_xla}


def available_impls() -> tuple[str, ...]:
    """Names accepted by ``impl`` (None means: choose by backend)."""
    return tuple(sorted(ATTENTION_IMPLS))


def _pick(impl: str | None, table: dict[str, Callable[..., jax.Array]], what: str) -> Callable[..., jax.Array]:
    if impl is None:
        # Until accelerator kernels are registered, every backend uses the XLA path.
        impl = "xla"
        log.debug("%s: backend %s -> impl %r", what, jax.default_backend(), impl)
    if impl not in table:
        raise ValueError(f"{what}: unknown impl {impl!r}; available: {sorted(table)} or None (auto)")
    return table[impl]


def _check_heads(num_q_heads: int, num_kv_heads: int, head_dim_q: int, head_dim_kv: int) -> None:
    if num_q_heads % num_kv_heads:
        raise ValueError(f"n_q={num_q_heads} query heads must be a multiple of n_kv={num_kv_heads} KV heads")
    if head_dim_q != head_dim_kv:
        raise ValueError(f"head_dim of q ({head_dim_q}) differs from that of k/v ({head_dim_kv})")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = True,
    sm_scale: float | None = None,
    impl: str | None = None,
) -> jax.Array:
    """Grouped-query attention. q [B, T, n_q, d_h], k and v [B, S, n_kv, d_h] -> [B, T, n_q, d_h].

    n_q % n_kv == 0; query head h attends with KV head h // (n_q // n_kv). K/V are never
    repeated to n_q heads in memory. ``sm_scale`` defaults to 1/sqrt(d_h). Differentiable.
    """
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[0] != k.shape[0]:
        raise ValueError(f"attention expects q [B,T,n_q,d], k=v [B,S,n_kv,d]; got {q.shape}, {k.shape}, {v.shape}")
    _check_heads(q.shape[2], k.shape[2], q.shape[3], k.shape[3])
    if causal and q.shape[1] > k.shape[1]:
        raise ValueError(f"causal attention needs T <= S; got T={q.shape[1]}, S={k.shape[1]}")
    return _pick(impl, ATTENTION_IMPLS, "attention")(q, k, v, causal=causal, sm_scale=sm_scale)


def decode_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    sm_scale: float | None = None,
    impl: str | None = None,
) -> jax.Array:
    """One-token attention against a KV cache. q [B, n_q, d_h], caches [B, S, n_kv, d_h],
    lengths [B] int32 (entries 0..length-1 are valid; length >= 1) -> [B, n_q, d_h]."""
    if q.ndim != 3 or k_cache.ndim != 4 or k_cache.shape != v_cache.shape or lengths.shape != (q.shape[0],):
        raise ValueError(
            "decode_attention expects q [B,n_q,d], caches [B,S,n_kv,d], lengths [B]; "
            f"got {q.shape}, {k_cache.shape}, {v_cache.shape}, {lengths.shape}"
        )
    _check_heads(q.shape[1], k_cache.shape[2], q.shape[2], k_cache.shape[3])
    return _pick(impl, DECODE_IMPLS, "decode_attention")(q, k_cache, v_cache, lengths, sm_scale=sm_scale)
