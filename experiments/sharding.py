"""Device mesh from the config, shardings from the logical-axis rules, sharded init and the sharded train step."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from ml_collections import config_dict

from experiments import model as model_lib, optim
from experiments.validate import MESH_AXES, ConfigError

log = logging.getLogger(__name__)

Rules = Mapping[str, Any]  # logical name -> mesh axis, tuple of mesh axes, or None/() (replicated)


def mesh_shape(mesh_config: Mapping[str, int], device_count: int) -> tuple[int, ...]:
    """Sizes of ('data', 'fsdp', 'tensor') with the one -1 filled in; ConfigError unless the
    product equals device_count."""
    sizes = {axis: mesh_config[axis] for axis in MESH_AXES}
    described = ", ".join(f"{a}={s}" for a, s in sizes.items())
    auto = [axis for axis, size in sizes.items() if size == -1]
    if len(auto) > 1:
        raise ConfigError(f"mesh.{auto[1]}", -1, f"at most one mesh axis may be -1 (got {described})")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if auto:
        if fixed <= 0 or device_count % fixed:
            raise ConfigError(
                f"mesh.{auto[0]}", -1, f"the other axes ({described}) must multiply to a divisor of the {device_count} devices"
            )
        sizes[auto[0]] = device_count // fixed
    if math.prod(sizes.values()) != device_count:
        raise ConfigError(
            "mesh", described, f"the mesh sizes multiply to {math.prod(sizes.values())}, but there are {device_count} devices"
        )
    return tuple(sizes[axis] for axis in MESH_AXES)


def make_mesh(config: config_dict.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The run's ('data', 'fsdp', 'tensor') mesh over all devices (or ``devices``).

    Auto axes, so shardings propagate through the step and with_sharding_constraint works
    (jax.make_mesh defaults to Explicit). Also checks that each micro-batch splits evenly over
    the batch axes: an uneven split would silently replicate the batch.
    """
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(config.mesh, len(devices))
    mesh = jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
    batch_axes = _mesh_axes(config.mesh_rules["batch"])
    shards = math.prod(mesh.shape[a] for a in batch_axes)
    micro_batch = config.batch_size // config.grad_accum_steps
    if micro_batch % shards:
        raise ConfigError(
            "batch_size",
            config.batch_size,
            f"each micro-batch (batch_size / grad_accum_steps = {micro_batch} sequences) must split evenly over "
            f"the {shards} batch shards (mesh_rules.batch={batch_axes} on mesh {dict(mesh.shape)})",
        )
    return mesh


def _mesh_axes(rule: Any) -> tuple[str, ...]:
    if rule is None:
        return ()
    return (rule,) if isinstance(rule, str) else tuple(rule)


def logical_to_spec(names: Sequence[str], shape: Sequence[int], mesh_sizes: Mapping[str, int], rules: Rules, what: str = "") -> P:
    """PartitionSpec of one array from its logical axis names.

    A mesh axis already used by an earlier dimension is dropped (an array cannot be split twice
    along one axis), and a dimension the mesh axes do not divide is replicated rather than
    failing, so one rules table serves a laptop, 8 simulated devices, a GPU and a TPU slice.
    """
    used: set[str] = set()
    spec = []
    for dim, name in zip(shape, names):
        if name not in rules:
            raise ConfigError(f"mesh_rules.{name}", None, f"missing: every logical axis needs a rule ({what} uses {name!r})")
        axes = tuple(a for a in _mesh_axes(rules[name]) if a not in used)
        split = math.prod(mesh_sizes[a] for a in axes)
        if dim % split:
            log.info("replicating %s dimension %r (size %d): mesh axes %s (%d-way) do not divide it", what, name, dim, axes, split)
            axes = ()
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return P(*spec)


def _path_key(path) -> str:
    return "/".join(str(p.key) for p in path)


def param_specs(model: nnx.Module, mesh: Mesh | jax.sharding.AbstractMesh, rules: Rules) -> dict:
    """PartitionSpecs mirroring nnx.to_pure_dict(nnx.state(model)), from each parameter's logical_axes.

    ``model`` may be abstract (abstract_model); ``mesh`` may be an AbstractMesh (sizes only).
    """
    axes = model_lib.logical_axes(model)

    def spec(path, leaf) -> P:
        key = _path_key(path)
        return logical_to_spec(axes.get(key, ()), leaf.shape, mesh.shape, rules, key)

    return jax.tree_util.tree_map_with_path(spec, nnx.to_pure_dict(nnx.state(model)))


def param_shardings(model: nnx.Module, mesh: Mesh, rules: Rules) -> dict:
    """NamedShardings mirroring nnx.to_pure_dict(nnx.state(model))."""
    specs = param_specs(model, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Sharding of token batches [B, T]: rows over the rules' batch axes, time replicated."""
    return NamedSharding(mesh, P(_mesh_axes(rules["batch"]) or None))


def shard_batch(host_batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global batch from this process's rows (its share, in process order): each host reads
    only its own data, and a single process simply passes the whole batch."""
    return jax.make_array_from_process_local_data(sharding, host_batch)


def abstract_model(cfg: model_lib.ModelConfig) -> model_lib.Transformer:
    """The model with shapes and metadata but no arrays: for specs, masks and the graphdef."""
    return nnx.eval_shape(lambda: model_lib.Transformer(cfg, nnx.Rngs(0)))


def init_params(cfg: model_lib.ModelConfig, seed: int, shardings: dict) -> dict:
    """Parameters (a pure dict) created directly in their shardings, never whole on one device.
    The values equal an eager Transformer(cfg, nnx.Rngs(seed)) on any mesh."""

    def init() -> dict:
        return nnx.to_pure_dict(nnx.state(model_lib.Transformer(cfg, nnx.Rngs(seed))))

    return jax.jit(init, out_shardings=shardings)()


def opt_state_shardings(
    optimizer: optax.GradientTransformation, params: dict, mesh: Mesh, shardings: dict
) -> Any:
    """Shardings of optimizer.init(params), derived by jax.eval_shape: a leaf that mirrors a
    parameter (Adam moments: same dict path at the end of its state path, same shape) shards
    like it; everything else (step counts) is replicated."""
    by_path = {
        tuple(p.key for p in path): (leaf.shape, sharding)
        for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(shardings))
    }
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf) -> NamedSharding:
        tail = []
        for p in reversed(path):
            if not isinstance(p, jax.tree_util.DictKey):
                break
            tail.insert(0, p.key)
        shape, sharding = by_path.get(tuple(tail), (None, replicated))
        return sharding if shape == leaf.shape else replicated

    return jax.tree_util.tree_map_with_path(pick, jax.eval_shape(optimizer.init, params))


def init_opt_state(optimizer: optax.GradientTransformation, params: dict, shardings: Any) -> Any:
    """optimizer.init(params), created directly in ``shardings``."""
    return jax.jit(optimizer.init, out_shardings=shardings)(params)


def _schedule_count(opt_state: Any) -> jax.Array:
    # Every optax transform with a count advances it once per update, so any one will do.
    return optax.tree_utils.tree_get_all_with_path(opt_state, "count")[0][1]


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    param_shardings: dict,
    opt_shardings: Any,
    batch_sharding: NamedSharding,
    *,
    grad_accum_steps: int = 1,
    schedule: optax.Schedule | None = None,
    loss: Callable[[nnx.GraphDef, dict, jax.Array], jax.Array] = optim.next_token_loss,
) -> Callable[[dict, Any, jax.Array], tuple[dict, Any, dict]]:
    """step(params, opt_state, tokens [B, T+1]) -> (params, opt_state, {"loss", "grad_norm"[, "lr"]}).

    Jitted with explicit shardings; params and opt_state are donated (do not reuse the inputs).
    With grad_accum_steps = k > 1 the batch is scanned as k micro-batches of B/k rows and the
    gradients averaged, which equals one step on the whole batch. grad_norm is before clipping;
    lr is the rate this step applied.
    """
    k = grad_accum_steps
    value_and_grad = jax.value_and_grad(lambda params, tokens: loss(graphdef, params, tokens))
    micro_sharding = NamedSharding(mesh, P(None, *batch_sharding.spec))

    def accumulate(params: dict, tokens: jax.Array) -> tuple[jax.Array, dict]:
        # Micro-batch i is rows i, i+k, i+2k, ...: each device's contiguous rows divide evenly
        # among the micro-batches, so splitting moves no data between devices.
        micro = tokens.reshape(tokens.shape[0] // k, k, *tokens.shape[1:]).swapaxes(0, 1)
        micro = jax.lax.with_sharding_constraint(micro, micro_sharding)
        zeros = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, params), param_shardings)

        def body(carry, tokens):
            loss_sum, grad_sum = carry
            value, grads = value_and_grad(params, tokens)
            return (loss_sum + value, jax.tree.map(jnp.add, grad_sum, grads)), None

        (loss_sum, grad_sum), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), micro)
        return loss_sum / k, jax.tree.map(lambda g: g / k, grad_sum)

    def step(params: dict, opt_state: Any, tokens: jax.Array) -> tuple[dict, Any, dict]:
        value, grads = accumulate(params, tokens) if k > 1 else value_and_grad(params, tokens)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads)}
        if schedule is not None:
            metrics["lr"] = schedule(_schedule_count(opt_state))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return jax.jit(
        step,
        in_shardings=(param_shardings, opt_shardings, batch_sharding),
        out_shardings=(param_shardings, opt_shardings, NamedSharding(mesh, P())),
        donate_argnums=(0, 1),
    )
