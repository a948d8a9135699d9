"""AdamW with weight decay on matrices, global-norm clipping, WSD or cosine learning rates, and the training loss."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from ml_collections import config_dict

from experiments import model as model_lib


def next_token_loss(graphdef: nnx.GraphDef, params: dict, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (nats) over tokens [B, T+1]."""
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def warmup_decay_schedule(
    peak: float, final: float, total_steps: int, warmup_steps: int, decay_start: int, shape: str
) -> optax.Schedule:
    """Linear warm-up 0 -> peak over [0, warmup_steps], peak until decay_start, then a cosine or
    linear decay to ``final`` at total_steps (held after). decay_start == warmup_steps is the
    classic warm-up + cosine schedule; a late decay_start is warmup-stable-decay (WSD)."""

    def schedule(count):
        step = jnp.asarray(count, jnp.float32)
        warm = peak * step / max(warmup_steps, 1)
        frac = jnp.clip((step - decay_start) / max(total_steps - decay_start, 1), 0.0, 1.0)
        remaining = 0.5 * (1.0 + jnp.cos(math.pi * frac)) if shape == "cosine" else 1.0 - frac
        return jnp.where(step < warmup_steps, warm, final + (peak - final) * remaining)

    return schedule


def learning_rate_schedule(config: config_dict.ConfigDict) -> optax.Schedule:
    """The run's schedule over optimizer steps (optax's 0-based count): step s uses schedule(s - 1).

    wsd: warm-up over warmup_frac of the steps, stable, decay over the last decay_frac (the paper:
    10% / 20%, to 0.1x). cosine: warm-up, then cosine over all remaining steps. Both end at
    final_lr_frac * learning_rate.
    """
    o, steps = config.optimizer, config.train_steps
    warmup = round(o.warmup_frac * steps)  # round, not int: 0.29 * 100 is 28.999...
    if o.schedule == "wsd":
        decay_start, shape = steps - round(o.decay_frac * steps), o.decay_shape
    else:
        decay_start, shape = warmup, "cosine"
    return warmup_decay_schedule(o.learning_rate, o.learning_rate * o.final_lr_frac, steps, warmup, decay_start, shape)


def decay_mask(model: nnx.Module, decay_embeddings: bool = False) -> dict:
    """True for the parameters that get weight decay: matrices (>= 2 dims, so never norm scales),
    and parameters with a vocab axis (embedding, untied output head) only if decay_embeddings.
    Mirrors nnx.to_pure_dict(nnx.state(model)); works on an abstract model (nnx.eval_shape)."""
    axes = model_lib.logical_axes(model)

    def decays(path, leaf) -> bool:
        names = axes.get("/".join(str(p.key) for p in path), ())
        return len(leaf.shape) >= 2 and (decay_embeddings or model_lib.VOCAB not in names)

    return jax.tree_util.tree_map_with_path(decays, nnx.to_pure_dict(nnx.state(model)))


def make_optimizer(config: config_dict.ConfigDict, mask: dict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Global-norm clipping (if grad_clip > 0), then AdamW with decay where ``mask`` is True.

    Moments take the parameters' dtype, so float32 master weights keep float32 moments whatever
    the compute dtype.
    """
    o = config.optimizer
    schedule = learning_rate_schedule(config)
    chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=mask))
    return optax.chain(*chain), schedule
