"""Optimizer: schedule values at hand-computed steps, the weight-decay mask, exact gradient
accumulation, float32 master weights under bfloat16 compute, and the new config checks."""

import math
import re

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import cpu_tiny
from experiments import model as model_lib, optim, sharding, validate

PEAK = 1e-3


def _schedule_config(schedule: str, shape: str = "cosine"):
    c = cpu_tiny.get_config()
    c.train_steps = 100
    c.optimizer.update(learning_rate=PEAK, schedule=schedule, decay_shape=shape, warmup_frac=0.1, decay_frac=0.2, final_lr_frac=0.1)
    return validate.validate(c)


@pytest.mark.parametrize(
    "shape,at_85",
    [
        ("linear", 1 - 0.9 * 0.25),  # a quarter into the decay
        ("cosine", 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
    ],
)
def test_wsd_schedule_at_hand_computed_steps(shape, at_85):
    schedule = optim.learning_rate_schedule(_schedule_config("wsd", shape))
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 50: 1.0, 80: 1.0, 85: at_85, 90: 0.55, 100: 0.1, 120: 0.1}
    got = {step: float(schedule(step)) / PEAK for step in expected}
    np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=1e-5, atol=1e-7)


def test_cosine_schedule_at_hand_computed_steps():
    schedule = optim.learning_rate_schedule(_schedule_config("cosine"))
    # warm-up to step 10, then cosine from the peak over 90 steps to 0.1x
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55, 32.5: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), 100: 0.1}
    got = {step: float(schedule(step)) / PEAK for step in expected}
    np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=1e-5, atol=1e-7)


def _tiny_model_config(**model):
    c = cpu_tiny.get_config()
    c.model.update(num_layers=2, d_model=32, num_q_heads=4, num_kv_heads=2, head_dim=8, d_ff=64, **model)
    c.seq_len, c.batch_size, c.train_steps = 16, 8, 10
    return validate.validate(c)


LAYER_MATRICES = {"attn/wq", "attn/wk", "attn/wv", "attn/wo", "mlp/w_gate", "mlp/w_up", "mlp/w_down"}


def _decayed(mask: dict) -> set[str]:
    flat = jax.tree_util.tree_leaves_with_path(mask)
    return {"/".join(str(p.key) for p in path) for path, on in flat if on}


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_decay_mask_selects_exactly_the_matrices(tie, decay_embeddings):
    cfg = model_lib.ModelConfig.from_config(_tiny_model_config(tie_embeddings=tie))
    mask = optim.decay_mask(sharding.abstract_model(cfg), decay_embeddings)
    expected = {f"layers/{i}/{m}" for i in range(2) for m in LAYER_MATRICES}
    if decay_embeddings:
        expected |= {"embedding"} | (set() if tie else {"lm_head"})
    assert _decayed(mask) == expected
    assert len(jax.tree.leaves(mask)) == 1 + 2 * (len(LAYER_MATRICES) + 2) + 1 + (not tie)  # norms present, not decayed


def _setup(config):
    """One-device mesh, sharded params and optimizer, as the training loop builds them."""
    mesh = sharding.make_mesh(config)
    cfg = model_lib.ModelConfig.from_config(config)
    abstract = sharding.abstract_model(cfg)
    p_shard = sharding.param_shardings(abstract, mesh, config.mesh_rules)
    optimizer, schedule = optim.make_optimizer(config, optim.decay_mask(abstract))
    o_shard = sharding.opt_state_shardings(optimizer, nnx.to_pure_dict(nnx.state(abstract)), mesh, p_shard)
    return mesh, cfg, abstract, p_shard, optimizer, schedule, o_shard


def test_grad_accumulation_equals_one_full_batch_step():
    config = _tiny_model_config()
    config.optimizer.grad_clip = 0.0  # so the first moment is (1 - b1) * the raw mean gradient
    config.optimizer.weight_decay = 0.1
    mesh, cfg, abstract, p_shard, optimizer, schedule, o_shard = _setup(config)
    graphdef = nnx.graphdef(abstract)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (config.batch_size, config.seq_len + 1), dtype=np.int32)

    @jax.jit
    def reference(params):
        loss, grads = jax.value_and_grad(lambda p: optim.next_token_loss(graphdef, p, tokens))(params)
        updates, state = optimizer.update(grads, optimizer.init(params), params)
        return loss, grads, state, optax.apply_updates(params, updates)

    params = sharding.init_params(cfg, 0, p_shard)
    opt_state = sharding.init_opt_state(optimizer, params, o_shard)
    loss, grads, ref_state, ref_params = reference(params)

    batch = sharding.batch_sharding(mesh, config.mesh_rules)
    for k in (1, 2, 4):
        step = sharding.make_train_step(graphdef, optimizer, mesh, p_shard, o_shard, batch, grad_accum_steps=k, schedule=schedule)
        fresh = jax.tree.map(jnp.copy, (params, opt_state))  # the step donates its inputs
        new_params, new_state, metrics = step(*fresh, sharding.shard_batch(tokens, batch))
        np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5, err_msg=f"k={k}")
        np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-5, err_msg=f"k={k}")
        mu, ref_mu = (optax.tree_utils.tree_get(s, "mu") for s in (new_state, ref_state))
        for got, want in zip(jax.tree.leaves(mu), jax.tree.leaves(ref_mu)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7, err_msg=f"k={k}")
        for got, want in zip(jax.tree.leaves(new_params), jax.tree.leaves(ref_params)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=f"k={k}")
        assert float(metrics["lr"]) == float(schedule(0))


def _dot_input_dtypes(jaxpr) -> list[tuple[str, ...]]:
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append(tuple(str(v.aval.dtype) for v in eqn.invars))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out += _dot_input_dtypes(sub)
    return out


def test_float32_master_weights_and_moments_with_bfloat16_compute():
    config = _tiny_model_config(dtype="bfloat16", param_dtype="float32")
    mesh, cfg, abstract, p_shard, optimizer, schedule, o_shard = _setup(config)
    graphdef = nnx.graphdef(abstract)
    params = sharding.init_params(cfg, 0, p_shard)
    opt_state = sharding.init_opt_state(optimizer, params, o_shard)
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (config.batch_size, config.seq_len + 1), dtype=np.int32)

    dots = _dot_input_dtypes(jax.make_jaxpr(lambda p: optim.next_token_loss(graphdef, p, tokens))(params).jaxpr)
    projections = [d for d in dots if d == ("bfloat16", "bfloat16")]
    assert len(projections) >= cfg.num_layers * 7 + 1, dots  # q, k, v, o, gate, up, down per layer + logits
    assert ("float32", "float32") not in dots[:3], dots  # the first layer's projections run in bf16

    step = sharding.make_train_step(graphdef, optimizer, mesh, p_shard, o_shard, sharding.batch_sharding(mesh, config.mesh_rules))
    params, opt_state, metrics = step(params, opt_state, tokens)
    assert np.isfinite(metrics["loss"])
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    moments = [optax.tree_utils.tree_get(opt_state, name) for name in ("mu", "nu")]
    assert {x.dtype for x in jax.tree.leaves(moments)} == {jnp.dtype("float32")}


BAD = [
    ("optimizer.schedule", "linear", "allowed values: wsd, cosine"),
    ("optimizer.decay_shape", "1-sqrt", "allowed values: cosine, linear"),
    ("optimizer.decay_frac", 0.95, "warmup_frac + decay_frac must be <= 1"),
    ("optimizer.decay_embeddings", 1, "True or False"),
    ("grad_accum_steps", 0, "positive integer"),
    ("grad_accum_steps", 3, "must divide batch_size=16"),
]


@pytest.mark.parametrize("field,value,allowed", BAD)
def test_bad_optimizer_fields_rejected(field, value, allowed):
    c = cpu_tiny.get_config()
    *parents, leaf = field.split(".")
    target = c
    for p in parents:
        target = target[p]
    with target.ignore_type():
        target[leaf] = value
    with pytest.raises(validate.ConfigError, match=re.escape(allowed)) as err:
        validate.validate(c)
    assert err.value.field == field and err.value.value == value
