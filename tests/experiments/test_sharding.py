"""Mesh and shardings: the mesh factory's checks, specs from the rules table, and the same loss
curve on 1 device and on 8 simulated devices with the parameters really split."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from configs import cpu_tiny
from experiments import model as model_lib, optim, sharding, validate

REPO = Path(__file__).resolve().parents[2]
STEPS = 5


def _config(data=-1, fsdp=1, tensor=1, grad_accum_steps=1):
    c = cpu_tiny.get_config()
    c.model.update(num_layers=2, d_model=64, num_q_heads=4, num_kv_heads=2, head_dim=16, d_ff=128, vocab_size=256)
    c.seq_len, c.batch_size, c.train_steps, c.grad_accum_steps = 32, 8, STEPS, grad_accum_steps
    c.optimizer.warmup_frac = 0.4  # a non-trivial schedule over the 5 steps
    c.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
    return validate.validate(c)


def train_steps(data: int, fsdp: int, tensor: int, grad_accum_steps: int) -> dict:
    """STEPS steps on fixed random token batches; the losses and how a few arrays are sharded."""
    config = _config(data, fsdp, tensor, grad_accum_steps)
    mesh = sharding.make_mesh(config)
    cfg = model_lib.ModelConfig.from_config(config)
    abstract = sharding.abstract_model(cfg)
    p_shard = sharding.param_shardings(abstract, mesh, config.mesh_rules)
    params = sharding.init_params(cfg, config.seed, p_shard)
    optimizer, schedule = optim.make_optimizer(config, optim.decay_mask(abstract))
    o_shard = sharding.opt_state_shardings(optimizer, params, mesh, p_shard)
    opt_state = sharding.init_opt_state(optimizer, params, o_shard)
    batch = sharding.batch_sharding(mesh, config.mesh_rules)
    step = sharding.make_train_step(
        nnx.graphdef(abstract), optimizer, mesh, p_shard, o_shard, batch, grad_accum_steps=grad_accum_steps, schedule=schedule
    )
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, cfg.vocab_size, (config.batch_size, config.seq_len + 1), dtype=np.int32) for _ in range(2)]
    losses, grad_norms, lrs = [], [], []
    for i in range(STEPS):  # two batches in turn, so the loss falls as they are memorized
        params, opt_state, metrics = step(params, opt_state, sharding.shard_batch(batches[i % 2], batch))
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
        lrs.append(float(metrics["lr"]))

    def layout(x: jax.Array) -> dict:
        return {"spec": str(x.sharding.spec), "global": list(x.shape), "shard": list(x.addressable_shards[0].data.shape)}

    mu = optax.tree_utils.tree_get(opt_state, "mu")
    counts = optax.tree_utils.tree_get_all_with_path(o_shard, "count")
    return {
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "losses": losses,
        "grad_norms": grad_norms,
        "lrs": lrs,
        "wq": layout(params["layers"][0]["attn"]["wq"]),
        "embedding": layout(params["embedding"]),
        "wq_mu": layout(mu["layers"][0]["attn"]["wq"]),
        "count_specs": sorted({str(s.spec) for _, s in counts}),
    }


MULTI_DEVICE = """
import json
from experiments import sharding, validate
from tests.experiments.test_sharding import _config, train_steps
runs = [train_steps(2, 2, 2, 2), train_steps(8, 1, 1, 1)]
try:
    sharding.make_mesh(_config(8, 1, 1, grad_accum_steps=2))  # 4-row micro-batches over 8 shards
    error = None
except validate.ConfigError as e:
    error = {"field": e.field, "message": str(e)}
print(json.dumps({"runs": runs, "batch_error": error}))
"""


@pytest.mark.slow
def test_same_loss_curve_on_one_and_eight_devices_with_sharded_parameters():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", MULTI_DEVICE], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    one = train_steps(1, 1, 1, 1)  # meanwhile, in this (one-device) process
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    tensor_fsdp, data_only = result["runs"]

    assert one["devices"] == 1 and one["losses"][-1] < one["losses"][0] - 0.05
    for run in (tensor_fsdp, data_only):
        assert run["devices"] == 8
        np.testing.assert_allclose(run["losses"], one["losses"], rtol=1e-4)
        np.testing.assert_allclose(run["grad_norms"], one["grad_norms"], rtol=1e-4)  # before clipping
        np.testing.assert_allclose(run["lrs"], one["lrs"], rtol=1e-6)
    assert tensor_fsdp["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    # wq [embed, q_heads, head_dim] = [64, 4, 16]: embed over fsdp, heads over tensor
    assert tensor_fsdp["wq"] == {"spec": str(P("fsdp", "tensor", None)), "global": [64, 4, 16], "shard": [32, 2, 16]}
    assert tensor_fsdp["embedding"] == {"spec": str(P("tensor", "fsdp")), "global": [256, 64], "shard": [128, 32]}
    assert tensor_fsdp["wq_mu"] == tensor_fsdp["wq"]  # Adam moments shard like their parameter
    assert tensor_fsdp["count_specs"] == [str(P())]  # step counts replicated
    assert data_only["wq"]["shard"] == [64, 4, 16]  # fsdp and tensor have size 1: whole on each device
    assert result["batch_error"]["field"] == "batch_size"
    assert "8 batch shards" in result["batch_error"]["message"]


def test_mesh_shape_fills_the_auto_axis():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
    assert sharding.mesh_shape({"data": 1, "fsdp": 1, "tensor": -1}, 1) == (1, 1, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)


@pytest.mark.parametrize(
    "sizes,devices,field,words",
    [
        ({"data": 2, "fsdp": 2, "tensor": 1}, 8, "mesh", "multiply to 4, but there are 8 devices"),
        ({"data": 4, "fsdp": 4, "tensor": 1}, 8, "mesh", "data=4, fsdp=4, tensor=1"),
        ({"data": -1, "fsdp": -1, "tensor": 2}, 8, "mesh.fsdp", "at most one mesh axis may be -1"),
        ({"data": -1, "fsdp": 3, "tensor": 1}, 8, "mesh.data", "must multiply to a divisor of the 8 devices"),
    ],
)
def test_mesh_shape_errors_name_the_sizes_and_device_count(sizes, devices, field, words):
    with pytest.raises(validate.ConfigError, match=words) as err:
        sharding.mesh_shape(sizes, devices)
    assert err.value.field == field


def test_make_mesh_on_one_device_has_auto_axes():
    mesh = sharding.make_mesh(_config())
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}
    with pytest.raises(validate.ConfigError, match="multiply to 2, but there are 1 devices"):
        sharding.make_mesh(_config(data=2))


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("mesh.fsdp", -1, "at most one mesh axis may be -1"),  # data is -1 already
        ("mesh.tensor", 0, "positive integer, or -1"),
        ("mesh_rules.embed", ("fsdp", "model"), "tuple of distinct mesh axes"),
        ("mesh_rules.mlp", ("tensor", "tensor"), "tuple of distinct mesh axes"),
        ("mesh_rules.heads", ("tensor",), "unknown logical axis"),
    ],
)
def test_validate_rejects_bad_mesh_fields(field, value, words):
    c = cpu_tiny.get_config()
    parent, leaf = field.split(".")
    c[parent][leaf] = value
    with pytest.raises(validate.ConfigError, match=words) as err:
        validate.validate(c)
    assert err.value.field == field


def _specs(rules, sizes=(2, 2, 2)):
    cfg = model_lib.ModelConfig.from_config(_config())
    mesh = AbstractMesh(sizes, validate.MESH_AXES)
    return sharding.param_specs(sharding.abstract_model(cfg), mesh, rules)


def test_param_specs_follow_the_rules_table():
    specs = _specs(_config().mesh_rules)
    layer = specs["layers"][1]
    assert specs["embedding"] == P("tensor", "fsdp")
    assert layer["attn"]["wq"] == P("fsdp", "tensor", None)
    assert layer["attn"]["wk"] == P("fsdp", "tensor", None)
    assert layer["attn"]["wo"] == P("tensor", None, "fsdp")
    assert layer["mlp"]["w_gate"] == P("fsdp", "tensor")
    assert layer["mlp"]["w_down"] == P("tensor", "fsdp")
    assert layer["attn_norm"]["scale"] == P("fsdp")
    assert jax.tree.structure(specs, is_leaf=lambda x: isinstance(x, P)) == jax.tree.structure(
        nnx.to_pure_dict(nnx.state(sharding.abstract_model(model_lib.ModelConfig.from_config(_config()))))
    )


def test_a_mesh_axis_is_used_once_per_parameter():
    rules = {**_config().mesh_rules.to_dict(), "head_dim": ("tensor",), "embed": ("fsdp", "tensor")}
    specs = _specs(rules)
    assert specs["layers"][0]["attn"]["wq"] == P(("fsdp", "tensor"), None, None)  # embed took tensor first
    assert specs["layers"][0]["mlp"]["w_down"] == P("tensor", "fsdp")  # mlp took tensor; embed keeps fsdp


def test_indivisible_dimension_is_replicated_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="experiments.sharding"):
        specs = _specs(_config().mesh_rules, sizes=(1, 1, 3))  # 4 q heads, 2 kv heads, vocab 256: none split 3 ways
    assert specs["layers"][0]["attn"]["wq"] == P("fsdp", None, None)
    assert specs["embedding"] == P(None, "fsdp")
    assert specs["layers"][0]["mlp"]["w_up"] == P("fsdp", None)  # d_ff 128
    assert "replicating layers/0/attn/wq dimension 'q_heads' (size 4)" in caplog.text


def test_missing_rule_is_a_config_error():
    rules = {k: v for k, v in _config().mesh_rules.to_dict().items() if k != "mlp"}
    with pytest.raises(validate.ConfigError, match="every logical axis needs a rule") as err:
        _specs(rules)
    assert err.value.field == "mesh_rules.mlp"


def test_init_params_equals_the_eager_model():
    cfg = model_lib.ModelConfig.from_config(_config())
    mesh = sharding.make_mesh(_config())
    params = sharding.init_params(cfg, 3, sharding.param_shardings(sharding.abstract_model(cfg), mesh, _config().mesh_rules))
    eager = nnx.to_pure_dict(nnx.state(model_lib.Transformer(cfg, nnx.Rngs(3))))
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(eager), strict=True):
        np.testing.assert_array_equal(got, want)
