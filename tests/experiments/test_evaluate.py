"""Held-out evaluation: token-weighted cross-entropy per context length, with exact token counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import cpu_tiny
from experiments import evaluate, validate
from experiments.model import ModelConfig, Transformer

CFG = ModelConfig(num_layers=2, d_model=32, num_q_heads=4, num_kv_heads=2, head_dim=8, d_ff=64, vocab_size=61, rope_theta=10_000.0)


def direct_loss(forward, batches) -> float:
    """Mean next-token cross-entropy over all predicted tokens, in float64 from the model's logits."""
    total, count = 0.0, 0
    for tokens in batches:
        logits = np.asarray(forward(tokens[:, :-1]), np.float64)
        logits -= logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        targets = tokens[:, 1:]
        total -= np.take_along_axis(log_probs, targets[..., None], -1).sum()
        count += targets.size
    return total / count


def test_losses_at_three_contexts_are_token_weighted():
    rng = np.random.default_rng()
    model = Transformer(CFG, nnx.Rngs(int(rng.integers(1 << 30))))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    forward = jax.jit(lambda tokens: nnx.merge(graphdef, params)(tokens))  # logits only
    # unequal batch sizes: the mean over batches differs from the mean over tokens
    sizes = {8: (5, 1), 16: (2,), 32: (1, 3)}
    batches = {ctx: [rng.integers(0, CFG.vocab_size, (b, ctx + 1)).astype(np.int32) for b in bs] for ctx, bs in sizes.items()}
    # a few repeated tokens make some positions predictable, so batches differ in loss
    batches[8][1][:] = 7
    batches[32][0][:] = 3

    rows = evaluate.evaluate(graphdef, params, batches)
    assert [r["context"] for r in rows] == [8, 16, 32]
    assert [r["tokens"] for r in rows] == [8 * 6, 16 * 2, 32 * 4]
    for row in rows:
        ctx = row["context"]
        expected = direct_loss(forward, batches[ctx])
        assert row["loss"] == pytest.approx(expected, rel=2e-5)
        if len(batches[ctx]) > 1:
            per_batch_mean = np.mean([direct_loss(forward, [b]) for b in batches[ctx]])
            assert abs(per_batch_mean - expected) > 1e-2  # the weighting matters for this data
    # a second evaluation reuses the compiled losses and gives the same numbers
    assert evaluate.evaluate(graphdef, params, batches) == rows


def test_wrong_shape_and_empty_context_are_errors():
    model = Transformer(CFG, nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    with pytest.raises(ValueError, match=r"context 8 needs token batches \[B, 9\]; got shape \(2, 8\)"):
        evaluate.evaluate(graphdef, params, {8: [np.zeros((2, 8), np.int32)]})
    with pytest.raises(ValueError, match="no held-out batches for context 8"):
        evaluate.evaluate(graphdef, params, {8: []})


def test_contexts_and_plan():
    assert evaluate.contexts(128) == (32, 64, 128)
    assert evaluate.contexts(128, (512, 128, 256)) == (32, 64, 128, 256, 512)
    config = cpu_tiny.get_config()  # batch 16 x 128 tokens
    config.eval_contexts = (4096,)
    config.eval_batches = 3
    plan = evaluate.plan(validate.validate(config))
    assert plan == (
        evaluate.EvalShape(32, 64, 3),
        evaluate.EvalShape(64, 32, 3),
        evaluate.EvalShape(128, 16, 3),
        evaluate.EvalShape(4096, 1, 3),
    )


def test_long_context_on_cpu_takes_the_blocked_path():
    """With the config's "auto" attention, 2048 keys on CPU never materialize T x T scores."""
    cfg = ModelConfig(num_layers=1, d_model=16, num_q_heads=2, num_kv_heads=1, head_dim=8, d_ff=32, vocab_size=17)
    graphdef, state = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    tokens = jax.ShapeDtypeStruct((1, 2049), jnp.int32)
    compiled = evaluate._nll_sum.lower(graphdef, params, tokens).compile()
    one_head_of_scores = 2048 * 2048 * 4  # dense "xla" needs several times this (about 100 MB)
    assert compiled.memory_analysis().temp_size_in_bytes < one_head_of_scores


@pytest.mark.parametrize("bad", [(256, 0), (128.5,), (True,), (None,)])
def test_bad_eval_contexts_rejected(bad):
    config = cpu_tiny.get_config()
    config.unlock()
    config.eval_contexts = bad
    with pytest.raises(validate.ConfigError, match="positive integers") as err:
        validate.validate(config)
    assert err.value.field == "eval_contexts" and err.value.value == bad
