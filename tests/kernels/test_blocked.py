"""Blocked XLA attention ("xla_blocked"): exactness against float64 and memory that does not grow as T x S."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
from kernels import blocked
from tests.kernels.test_flash import np_attention_fwd_bwd

# (n_q, n_kv, causal, T, S, block_q, block_k): blocks need not divide T or S, nor be powers of two.
CASES = [
    (1, 1, True, 37, 37, 8, 16),
    (4, 1, True, 13, 50, 5, 7),
    (8, 2, False, 21, 33, 16, 16),
    (8, 2, True, 9, 40, 4, 32),
    (4, 4, False, 18, 18, 64, 64),
]


@pytest.mark.parametrize("hq,hkv,causal,t,s,bq,bk", CASES)
def test_blocked_forward_and_gradients_match_float64(hq, hkv, causal, t, s, bq, bk):
    rng = np.random.default_rng()
    d = 16
    q, k, v, do = (jnp.asarray(rng.standard_normal(sh), jnp.float32) for sh in
                   ((2, t, hq, d), (2, s, hkv, d), (2, s, hkv, d), (2, t, hq, d)))
    f = functools.partial(kernels.attention, causal=causal, impl="xla_blocked", block_q=bq, block_k=bk)
    o, vjp = jax.vjp(f, q, k, v)
    ref_o, ref_grads = np_attention_fwd_bwd(q, k, v, do, causal, 1 / np.sqrt(d))
    for name, a, r, tol in zip(("out", "dq", "dk", "dv"), (o, *vjp(do)), (ref_o, *ref_grads), (2e-5, 1e-4, 1e-4, 1e-4)):
        err = np.abs(np.asarray(a, np.float64) - r).max() / np.abs(r).max()
        assert err <= tol, f"{name}: {err:.2e}"


def test_blocked_bfloat16_matches_dense_xla():
    rng = np.random.default_rng()
    q, k, v = (jnp.asarray(rng.standard_normal(sh), jnp.bfloat16) for sh in ((1, 40, 8, 32), (1, 40, 2, 32), (1, 40, 2, 32)))
    a = kernels.attention(q, k, v, impl="xla_blocked", block_q=16, block_k=16)
    b = kernels.attention(q, k, v, impl="xla")
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=3e-2, rtol=3e-2)


def _temp_bytes(impl, t, grad):
    q = jax.ShapeDtypeStruct((1, t, 4, 64), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, t, 1, 64), jnp.float32)
    f = functools.partial(kernels.attention, impl=impl)
    if grad:
        f = jax.grad(lambda q, k, v: jnp.sum(kernels.attention(q, k, v, impl=impl)), (0, 1, 2))
    return jax.jit(f).lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("grad", [False, True])
def test_blocked_memory_is_linear_in_length(grad):
    """Compiled temp memory (deterministic): the dense path holds n_q * T^2 scores, the blocked
    one a score tile. Doubling T must not quadruple the blocked path's memory."""
    t = 4096
    dense = _temp_bytes("xla", t, grad)
    small, big = _temp_bytes("xla_blocked", t // 2, grad), _temp_bytes("xla_blocked", t, grad)
    assert dense >= 4 * t * t * 4  # n_q=4 float32 score matrices at least
    assert big < dense / 8
    assert big < 3 * small


def test_auto_uses_blocked_path_on_cpu_at_long_context(caplog):
    if jax.default_backend() != "cpu":
        pytest.skip("the auto rule under test is the CPU one")
    q = jax.ShapeDtypeStruct((1, 8, 4, 16), jnp.float32)
    long_kv = jax.ShapeDtypeStruct((1, kernels.dispatch.BLOCKED_MIN_KEYS, 2, 16), jnp.float32)
    short_kv = jax.ShapeDtypeStruct((1, 64, 2, 16), jnp.float32)
    with caplog.at_level(logging.DEBUG, logger="kernels.dispatch"):
        jax.eval_shape(lambda q, k: kernels.attention(q, k, k), q, long_kv)
        jax.eval_shape(lambda q, k: kernels.attention(q, k, k), q, short_kv)
    picked = [r.getMessage() for r in caplog.records if "impl" in r.getMessage()]
    assert "'xla_blocked'" in picked[0] and "'xla'" in picked[1], picked
    assert set(kernels.available_impls()) == {"xla", "xla_blocked", "pallas", "pallas_interpret"}
    assert blocked.DEFAULT_BLOCK_K <= kernels.dispatch.BLOCKED_MIN_KEYS
