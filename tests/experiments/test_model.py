"""Model invariants: exact parameter counts, GQA == MHA with repeated K/V weights, causality, KV-cache decode."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from costlaw.arch import Architecture, default_d_ff, param_counts
from experiments import model as model_lib
from experiments.model import ModelConfig, Transformer

LOGICAL = {"vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp"}


def make_cfg(**kw) -> ModelConfig:
    base = dict(num_layers=2, d_model=48, num_q_heads=4, num_kv_heads=2, head_dim=16, d_ff=96, vocab_size=67, rope_theta=10_000.0)
    base.update(kw)
    return ModelConfig(**base)


def fresh_model(cfg: ModelConfig) -> Transformer:
    return Transformer(cfg, nnx.Rngs(int(np.random.default_rng().integers(1 << 30))))


def random_tokens(cfg, batch, length):
    return jnp.asarray(np.random.default_rng().integers(0, cfg.vocab_size, (batch, length)), jnp.int32)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # GQA, tied
        dict(tie_embeddings=False),  # GQA, untied
        dict(num_q_heads=3, num_kv_heads=3),  # MHA; n_q * d_h != d_model
        dict(num_q_heads=8, num_kv_heads=1, head_dim=8),  # MQA
        dict(num_layers=3, d_model=64, d_ff=default_d_ff(64), num_q_heads=2, num_kv_heads=2, head_dim=32, tie_embeddings=False),
    ],
)
def test_param_count_formula_equals_counted(kw):
    cfg = make_cfg(**kw)
    arch = Architecture(
        num_layers=cfg.num_layers, d_model=cfg.d_model, num_q_heads=cfg.num_q_heads, num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, vocab_size=cfg.vocab_size, d_ff=cfg.d_ff, tie_embeddings=cfg.tie_embeddings,
    )
    model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    counts = param_counts(arch)
    assert model_lib.count_params(model) == counts.total
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    embedding = state["embedding"].size + (0 if cfg.tie_embeddings else state["lm_head"].size)
    assert counts.embedding == embedding
    assert counts.non_embedding == counts.total - embedding


def test_every_parameter_has_logical_axes():
    model = nnx.eval_shape(lambda: Transformer(make_cfg(tie_embeddings=False), nnx.Rngs(0)))
    shapes = {"/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    axes = model_lib.logical_axes(model)
    assert set(axes) == set(shapes)
    for path, names in axes.items():
        assert len(names) == len(shapes[path]) and set(names) <= LOGICAL, (path, names)
    assert axes["layers/0/attn/wk"] == ("embed", "kv_heads", "head_dim")
    assert axes["lm_head"] == ("embed", "vocab")


def test_gqa_equals_mha_with_kv_weights_repeated_per_group():
    """A GQA model computes exactly what an MHA model computes when each query head's K/V
    projection is a copy of its group's: GQA is weight sharing, not a different function."""
    gqa_cfg = make_cfg(num_q_heads=6, num_kv_heads=2)
    mha_cfg = dataclasses.replace(gqa_cfg, num_kv_heads=6)
    gqa = fresh_model(gqa_cfg)
    mha = Transformer(mha_cfg, nnx.Rngs(0))
    g_state = nnx.to_pure_dict(nnx.state(gqa, nnx.Param))
    m_state = jax.tree.map(lambda x: x, g_state)
    for i in g_state["layers"]:
        for name in ("wk", "wv"):
            m_state["layers"][i]["attn"][name] = jnp.repeat(g_state["layers"][i]["attn"][name], 3, axis=1)
    nnx.replace_by_pure_dict(st := nnx.state(mha, nnx.Param), m_state)
    nnx.update(mha, st)
    tokens = random_tokens(gqa_cfg, 2, 21)
    np.testing.assert_allclose(np.asarray(gqa(tokens)), np.asarray(mha(tokens)), atol=1e-5, rtol=1e-5)


def _logits_from_embeddings(model, x):
    positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    for layer in model.layers:
        x, _ = layer(x, positions)
    return model._logits(x)


@pytest.mark.parametrize("t", [0, 5, 15])
def test_causality_by_gradient(t):
    """The output at position t has zero gradient with respect to every later input position."""
    cfg = make_cfg()
    model = fresh_model(cfg)
    x = jnp.asarray(np.random.default_rng().standard_normal((1, 16, cfg.d_model)), jnp.float32)
    grad = jax.grad(lambda x: _logits_from_embeddings(model, x)[0, t].sum())(x)
    per_position = np.abs(np.asarray(grad[0])).sum(-1)
    assert np.all(per_position[t + 1 :] == 0.0)
    assert np.all(per_position[: t + 1] > 0.0)


decode_step = nnx.jit(lambda model, tokens, cache, lengths: model.decode_step(tokens, cache, lengths))
forward = nnx.jit(lambda model, tokens: model(tokens))


def test_decode_with_kv_cache_equals_full_forward():
    cfg = make_cfg(num_q_heads=8, num_kv_heads=2, tie_embeddings=False)
    model = fresh_model(cfg)
    tokens = random_tokens(cfg, 3, 20)
    full = np.asarray(model(tokens))
    cache = model.init_cache(3, 24, jnp.float32)
    prefill_logits, cache = model.prefill(tokens[:, :9], cache)
    np.testing.assert_allclose(np.asarray(prefill_logits), full[:, :9], atol=1e-4, rtol=1e-4)
    lengths = jnp.full((3,), 9, jnp.int32)
    for i in range(9, 20):
        logits, cache = decode_step(model, tokens[:, i], cache, lengths)
        lengths = lengths + 1
        np.testing.assert_allclose(np.asarray(logits), full[:, i], atol=1e-4, rtol=1e-4)


def test_decode_with_ragged_prompts():
    """Sequences of different prompt lengths decode in one batch; each matches its own full forward."""
    cfg = make_cfg()
    model = fresh_model(cfg)
    seqs = [random_tokens(cfg, 1, 12)[0], random_tokens(cfg, 1, 12)[0]]
    prompt_lengths = [4, 9]
    padded = jnp.stack([jnp.where(jnp.arange(12) < n, s, 0) for s, n in zip(seqs, prompt_lengths)])
    cache = model.init_cache(2, 16, jnp.float32)
    _, cache = model.prefill(padded[:, :9], cache)
    lengths = jnp.asarray(prompt_lengths, jnp.int32)
    for step in range(3):
        next_tokens = jnp.stack([s[n + step] for s, n in zip(seqs, prompt_lengths)])
        logits, cache = decode_step(model, next_tokens, cache, lengths)
        for b, (s, n) in enumerate(zip(seqs, prompt_lengths)):
            ref = forward(model, s[None, : n + step + 1])[0, -1]
            np.testing.assert_allclose(np.asarray(logits[b]), np.asarray(ref), atol=1e-4, rtol=1e-4)
        lengths = lengths + 1


def test_kv_cache_layout():
    cfg = make_cfg(num_kv_heads=1)
    cache = Transformer(cfg, nnx.Rngs(0)).init_cache(5, 32)
    assert len(cache) == cfg.num_layers
    assert cache[0].k.shape == cache[0].v.shape == (5, 32, 1, cfg.head_dim)


def test_bfloat16_compute_tracks_float32():
    cfg32 = make_cfg()
    model32 = fresh_model(cfg32)
    model16 = Transformer(dataclasses.replace(cfg32, dtype="bfloat16"), nnx.Rngs(0))
    nnx.update(model16, nnx.state(model32, nnx.Param))
    tokens = random_tokens(cfg32, 2, 16)
    a, b = np.asarray(model32(tokens)), np.asarray(model16(tokens))
    assert b.dtype == np.float32  # logits accumulate in float32 whatever the compute dtype
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()
    assert not np.array_equal(a, b)  # bf16 compute really happened


def test_rope_rotation_is_relative():
    """RoPE scores depend only on the offset between positions, and rotation keeps norms."""
    rng = np.random.default_rng()
    q = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)

    def score(pq, pk):
        rq = model_lib.rope(q, jnp.array([[pq]]), 10_000.0)
        rk = model_lib.rope(k, jnp.array([[pk]]), 10_000.0)
        return float(jnp.sum(rq * rk))

    scale = float(jnp.linalg.norm(q) * jnp.linalg.norm(k))
    by_offset = np.array([[score(start + off, start) for start in (0, 5, 40)] for off in range(6)])
    np.testing.assert_allclose(by_offset, by_offset[:, :1].repeat(3, 1), atol=1e-5 * scale)
    assert np.ptp(by_offset[:, 0]) > 1e-3 * scale  # the offset does matter
    np.testing.assert_allclose(np.linalg.norm(model_lib.rope(q, jnp.array([[7]]), 10_000.0)), np.linalg.norm(q), rtol=1e-6)
