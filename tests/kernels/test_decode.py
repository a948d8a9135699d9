"""Pallas flash-decoding (interpret mode on CPU) against float64 NumPy, ragged lengths from 1 to S."""

import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import decode

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2}  # bf16: rounded inputs, P cast to bf16, bf16 output


def np_decode(q, kc, vc, lengths, scale):
    """Float64 one-token attention per sequence over its first `length` cache entries."""
    q, kc, vc = (np.asarray(x, np.float64) for x in (q, kc, vc))
    g = q.shape[1] // kc.shape[2]
    out = np.empty(q.shape)
    for i, n in enumerate(lengths):
        k, v = np.repeat(kc[i, :n], g, axis=1), np.repeat(vc[i, :n], g, axis=1)
        s = np.einsum("hd,shd->hs", q[i], k) * scale
        p = np.exp(s - s.max(-1, keepdims=True))
        out[i] = np.einsum("hs,shd->hd", p / p.sum(-1, keepdims=True), v)
    return out


# (n_q, n_kv, S, block_k, num_chunks, dtype)
CASES = [
    (1, 1, 48, 16, None, jnp.float32),
    (4, 1, 64, 16, 2, jnp.float32),
    (8, 2, 96, 32, None, jnp.bfloat16),
    (8, 2, 80, 16, 3, jnp.float32),
    (4, 4, 128, 16, 16, jnp.float32),
    (12, 4, 64, 32, 1, jnp.float32),  # G = 3: a group size that is not a power of two
]


@pytest.mark.parametrize("hq,hkv,s,bk,chunks,dtype", CASES)
def test_decode_matches_float64_with_ragged_lengths(hq, hkv, s, bk, chunks, dtype):
    rng = np.random.default_rng()
    b, d = 5, 32
    lengths = np.array([1, s, rng.integers(2, s), rng.integers(2, s), bk + 1], np.int32)
    q = jnp.asarray(rng.standard_normal((b, hq, d)), dtype)
    kc = rng.standard_normal((b, s, hkv, d)).astype(np.float32)
    vc = rng.standard_normal((b, s, hkv, d)).astype(np.float32)
    # Entries past a sequence's length are garbage in a real cache: NaN must not leak out.
    past = np.arange(s)[None, :] >= lengths[:, None]
    kc[past], vc[past] = np.nan, np.nan
    kc, vc = jnp.asarray(kc, dtype), jnp.asarray(vc, dtype)
    scale = float(rng.uniform(0.1, 0.4))
    out = kernels.decode_attention(
        q, kc, vc, jnp.asarray(lengths), sm_scale=scale, impl="pallas_interpret", block_k=bk, num_chunks=chunks
    )
    assert out.dtype == dtype and out.shape == q.shape
    ref = np_decode(q.astype(jnp.float32), kc.astype(jnp.float32), vc.astype(jnp.float32), lengths, scale)
    got = np.asarray(out, np.float64)
    assert np.isfinite(got).all()  # interpret mode poisons unwritten outputs with NaN
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err <= TOL[dtype], f"max error {err:.2e} relative to max |ref|"


def test_one_long_sequence_is_split_into_chunks():
    cfg = decode._make_config(
        jnp.ones((1, 8, 64)), jnp.ones((1, 4096, 2, 64)), sm_scale=None, backend="interpret", block_k=64, num_chunks=16
    )
    assert cfg.num_chunks == 16 and cfg.chunk * cfg.num_chunks == 4096 and cfg.chunk % cfg.block_k == 0


def test_unsupported_cache_shapes_are_named():
    assert "divisor" in decode.supported(50, 2, 64, "triton")
    assert "power-of-two head_dim" in decode.supported(64, 2, 96, "triton")
    assert "% 128" in decode.supported(1024, 2, 64, "mosaic_tpu")
    assert decode.supported(1024, 1, 64, "mosaic_tpu") is None
    assert decode.supported(1024, 8, 128, "triton") is None
    with pytest.raises(ValueError, match="cannot serve"):
        kernels.decode_attention(jnp.ones((1, 4, 16)), jnp.ones((1, 50, 2, 16)), jnp.ones((1, 50, 2, 16)),
                                 jnp.ones((1,), jnp.int32), impl="pallas_interpret")
