"""The XLA reference attention against float64 NumPy with K/V explicitly repeated to n_q heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels

HEADS = [(1, 1), (4, 1), (8, 2), (4, 4)]


def np_attention(q, k, v, causal, sm_scale=None):
    """Plain multi-head attention in float64, K/V repeated so head h reads KV head h // group."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    scale = 1 / np.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    s = np.einsum("bthd,bshd->bhts", q, k) * scale
    if causal:
        t, n = q.shape[1], k.shape[1]
        mask = np.arange(n)[None, :] <= np.arange(t)[:, None] + (n - t)
        s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, v)


def _qkv(rng, b, t, s, hq, hkv, d, dtype=np.float32):
    return (
        rng.standard_normal((b, t, hq, d)).astype(dtype),
        rng.standard_normal((b, s, hkv, d)).astype(dtype),
        rng.standard_normal((b, s, hkv, d)).astype(dtype),
    )


@pytest.mark.parametrize("hq,hkv", HEADS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t,s", [(17, 17), (5, 23), (64, 64)])
def test_attention_matches_repeated_float64(hq, hkv, causal, t, s):
    rng = np.random.default_rng()
    q, k, v = _qkv(rng, 2, t, s, hq, hkv, 16)
    out = kernels.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=causal)
    np.testing.assert_allclose(np.asarray(out), np_attention(q, k, v, causal), atol=2e-5, rtol=2e-5)


def test_sm_scale_is_used():
    rng = np.random.default_rng()
    q, k, v = _qkv(rng, 1, 9, 9, 4, 2, 8)
    out = kernels.attention(q, k, v, causal=True, sm_scale=0.37)
    np.testing.assert_allclose(np.asarray(out), np_attention(q, k, v, True, 0.37), atol=2e-5, rtol=2e-5)
    assert not np.allclose(np.asarray(out), np_attention(q, k, v, True), atol=1e-3)


def test_bfloat16_inputs_accumulate_in_float32():
    rng = np.random.default_rng()
    q, k, v = _qkv(rng, 2, 33, 33, 8, 2, 32)
    qb, kb, vb = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    out = kernels.attention(qb, kb, vb, causal=True)
    assert out.dtype == jnp.bfloat16
    ref = np_attention(*(np.asarray(x, np.float32) for x in (qb, kb, vb)), True)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=2e-2, rtol=2e-2)  # bf16 output rounding


def test_mha_case_equals_plain_multi_head_attention():
    """n_kv == n_q must be ordinary multi-head attention (no grouping at all)."""
    rng = np.random.default_rng()
    q, k, v = _qkv(rng, 2, 12, 12, 4, 4, 8)
    s = np.einsum("bthd,bshd->bhts", q.astype(np.float64), k) / np.sqrt(8)
    s = np.where(np.tril(np.ones((12, 12), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(kernels.attention(q, k, v)), np.einsum("bhts,bshd->bthd", p, v), atol=2e-5)


@pytest.mark.parametrize("hq,hkv", HEADS)
def test_gradients_match_repeated_kv_formulation(hq, hkv):
    """Grouped attention's gradients equal those of attention on explicitly repeated K/V
    (the repeat's transpose sums dK/dV over each group)."""
    rng = np.random.default_rng()
    q, k, v = _qkv(rng, 2, 13, 13, hq, hkv, 8)
    w = jnp.asarray(rng.standard_normal((2, 13, hq, 8)), jnp.float32)
    g = hq // hkv

    def grouped(q, k, v):
        return jnp.sum(kernels.attention(q, k, v) * w)

    def repeated(q, k, v):
        return jnp.sum(kernels.attention(q, jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)) * w)

    for a, b in zip(jax.grad(grouped, (0, 1, 2))(q, k, v), jax.grad(repeated, (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
        assert np.abs(np.asarray(a)).max() > 1e-3  # gradients actually flow


@pytest.mark.parametrize("hq,hkv", HEADS)
def test_decode_attention_ragged_lengths(hq, hkv):
    rng = np.random.default_rng()
    b, s, d = 4, 19, 16
    lengths = np.array([1, s, 7, 12], np.int32)
    q = rng.standard_normal((b, hq, d)).astype(np.float32)
    kc = rng.standard_normal((b, s, hkv, d)).astype(np.float32)
    vc = rng.standard_normal((b, s, hkv, d)).astype(np.float32)
    out = np.asarray(kernels.decode_attention(q, kc, vc, jnp.asarray(lengths)))
    for i, n in enumerate(lengths):
        ref = np_attention(q[i : i + 1, None], kc[i : i + 1, :n], vc[i : i + 1, :n], causal=False)[:, 0]
        np.testing.assert_allclose(out[i : i + 1], ref, atol=2e-5, rtol=2e-5)


def test_shape_and_impl_errors():
    q = jnp.ones((1, 4, 6, 8))
    kv = jnp.ones((1, 4, 4, 8))
    with pytest.raises(ValueError, match="multiple of n_kv"):
        kernels.attention(q, kv, kv)
    with pytest.raises(ValueError, match="unknown impl"):
        kernels.attention(jnp.ones((1, 4, 4, 8)), kv, kv, impl="nope")
    with pytest.raises(ValueError, match="T <= S"):
        kernels.attention(jnp.ones((1, 8, 4, 8)), kv, kv, causal=True)
    with pytest.raises(ValueError, match="lengths"):
        kernels.decode_attention(jnp.ones((1, 4, 8)), kv, kv, jnp.ones((2,), jnp.int32))
