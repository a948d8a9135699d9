"""Public attention entry points: check shapes, pick an implementation per backend, call it."""

from __future__ import annotations

import logging
from typing import Callable

import jax

from kernels import blocked, decode, flash, reference

log = logging.getLogger(__name__)

# Below this many keys the dense XLA path is fast and small; above it a fallback uses the
# blocked path, so e.g. a 16K-token evaluation on CPU never allocates T x S scores.
BLOCKED_MIN_KEYS = 2048
# Below this many query rows or keys a kernel launch costs more than it saves.
PALLAS_MIN_LEN = 128


def _xla(q, k, v, *, causal, sm_scale, **_blocks):
    # The dense reference has no blocks; block-size kwargs meant for other impls are ignored.
    return reference.attention_xla(q, k, v, causal=causal, sm_scale=sm_scale)


def _xla_blocked(q, k, v, *, causal, sm_scale, block_q=None, block_k=None, **_bwd_blocks):
    return blocked.blocked_attention(q, k, v, causal=causal, sm_scale=sm_scale, block_q=block_q, block_k=block_k)


def _pallas(q, k, v, **kw):
    return flash.flash_attention(q, k, v, backend=_compiled_backend(), **kw)


def _pallas_interpret(q, k, v, **kw):
    return flash.flash_attention(q, k, v, backend="interpret", **kw)


def _decode_xla(q, k_cache, v_cache, lengths, *, sm_scale, **_blocks):
    return reference.decode_attention_xla(q, k_cache, v_cache, lengths, sm_scale=sm_scale)


def _decode_pallas(q, k_cache, v_cache, lengths, **kw):
    return decode.decode_attention(q, k_cache, v_cache, lengths, backend=_compiled_backend(), **kw)


def _decode_pallas_interpret(q, k_cache, v_cache, lengths, **kw):
    return decode.decode_attention(q, k_cache, v_cache, lengths, backend="interpret", **kw)


def _compiled_backend() -> str:
    platform = jax.default_backend()
    if platform not in ("gpu", "cuda", "rocm", "tpu"):
        raise ValueError(f"impl='pallas' needs a GPU or TPU (backend is {platform!r}); use 'pallas_interpret' on CPU")
    return flash.backend_for_platform(platform)


ATTENTION_IMPLS: dict[str, Callable[..., jax.Array]] = {
    "xla": _xla,
    "xla_blocked": _xla_blocked,
    "pallas": _pallas,
    "pallas_interpret": _pallas_interpret,
}
# Decode is linear in S already, so "xla_blocked" (which a config may name for the whole
# model) decodes with the dense XLA path.
DECODE_IMPLS: dict[str, Callable[..., jax.Array]] = {
    "xla": _decode_xla,
    "xla_blocked": _decode_xla,
    "pallas": _decode_pallas,
    "pallas_interpret": _decode_pallas_interpret,
}


def available_impls() -> tuple[str, ...]:
    """Names accepted by ``impl`` (None means: choose by backend)."""
    return tuple(sorted(ATTENTION_IMPLS))


def _auto_attention(q: jax.Array, k: jax.Array) -> tuple[str, str]:
    """(impl, why) for impl=None: Pallas on GPU/TPU where the kernel serves the shape, else XLA."""
    platform = jax.default_backend()
    t, n_q, d = q.shape[1], q.shape[2], q.shape[3]
    s, n_kv = k.shape[1], k.shape[2]
    fallback = "xla_blocked" if s >= BLOCKED_MIN_KEYS else "xla"
    if platform not in ("gpu", "cuda", "rocm", "tpu"):
        return fallback, f"no Pallas backend on {platform}"
    if d > flash.MAX_HEAD_DIM:
        return fallback, f"head_dim {d} > {flash.MAX_HEAD_DIM}"
    if t * (n_q // n_kv) < PALLAS_MIN_LEN or s < PALLAS_MIN_LEN:
        return fallback, f"tiny shape (T*G={t * (n_q // n_kv)}, S={s} < {PALLAS_MIN_LEN})"
    if platform == "tpu" and not flash.tpu_fits(s, d):
        return fallback, f"K/V of one head (S={s}, d={d}) exceeds the TPU kernel's VMEM budget"
    return "pallas", "kernel serves this shape"


def _auto_decode(q: jax.Array, k_cache: jax.Array) -> tuple[str, str]:
    platform = jax.default_backend()
    s, n_kv, d = k_cache.shape[1:]
    if platform not in ("gpu", "cuda", "rocm", "tpu"):
        return "xla", f"no Pallas backend on {platform}"
    if s < PALLAS_MIN_LEN:
        return "xla", f"tiny cache (S={s} < {PALLAS_MIN_LEN})"
    reason = decode.supported(s, n_kv, d, flash.backend_for_platform(platform))
    if reason:
        return "xla", reason
    return "pallas", "kernel serves this shape"


def _pick(
    impl: str | None,
    table: dict[str, Callable[..., jax.Array]],
    what: str,
    auto: Callable[[], tuple[str, str]] = lambda: ("xla", "default"),
) -> Callable[..., jax.Array]:
    if impl is None:
        impl, why = auto()
        log.debug("%s: backend %s -> impl %r (%s)", what, jax.default_backend(), impl, why)
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
    block_q: int | None = None,
    block_k: int | None = None,
    block_q_bwd: int | None = None,
    block_k_bwd: int | None = None,
) -> jax.Array:
    """Grouped-query attention. q [B, T, n_q, d_h], k and v [B, S, n_kv, d_h] -> [B, T, n_q, d_h].

    n_q % n_kv == 0; query head h attends with KV head h // (n_q // n_kv). K/V are never
    repeated to n_q heads in memory. ``sm_scale`` defaults to 1/sqrt(d_h). Differentiable.
    ``impl``: None (auto: "pallas" on GPU/TPU where the kernel serves the shape, else "xla",
    or "xla_blocked" from BLOCKED_MIN_KEYS keys on), "xla", "xla_blocked", "pallas",
    "pallas_interpret". Block sizes (None: per-backend defaults) reach the impls that tile;
    "xla" ignores them, "xla_blocked" uses block_q and block_k.
    """
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[0] != k.shape[0]:
        raise ValueError(f"attention expects q [B,T,n_q,d], k=v [B,S,n_kv,d]; got {q.shape}, {k.shape}, {v.shape}")
    _check_heads(q.shape[2], k.shape[2], q.shape[3], k.shape[3])
    if causal and q.shape[1] > k.shape[1]:
        raise ValueError(f"causal attention needs T <= S; got T={q.shape[1]}, S={k.shape[1]}")
    fn = _pick(impl, ATTENTION_IMPLS, "attention", lambda: _auto_attention(q, k))
    blocks = dict(block_q=block_q, block_k=block_k, block_q_bwd=block_q_bwd, block_k_bwd=block_k_bwd)
    return fn(q, k, v, causal=causal, sm_scale=sm_scale, **blocks)


def decode_attention(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    lengths: jax.Array,
    *,
    sm_scale: float | None = None,
    impl: str | None = None,
    block_k: int | None = None,
    num_chunks: int | None = None,
) -> jax.Array:
    """One-token attention against a KV cache. q [B, n_q, d_h], caches [B, S, n_kv, d_h],
    lengths [B] int32 (entries 0..length-1 are valid; length >= 1) -> [B, n_q, d_h].

    ``impl`` as for `attention` (auto: "pallas" on GPU/TPU where kernels.decode.supported
    accepts the cache shape). ``block_k`` and ``num_chunks`` tune the Pallas kernel only.
    """
    if q.ndim != 3 or k_cache.ndim != 4 or k_cache.shape != v_cache.shape or lengths.shape != (q.shape[0],):
        raise ValueError(
            "decode_attention expects q [B,n_q,d], caches [B,S,n_kv,d], lengths [B]; "
            f"got {q.shape}, {k_cache.shape}, {v_cache.shape}, {lengths.shape}"
        )
    _check_heads(q.shape[1], k_cache.shape[2], q.shape[2], k_cache.shape[3])
    fn = _pick(impl, DECODE_IMPLS, "decode_attention", lambda: _auto_decode(q, k_cache))
    return fn(q, k_cache, v_cache, lengths, sm_scale=sm_scale, block_k=block_k, num_chunks=num_chunks)
