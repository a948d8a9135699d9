"""Validate and resolve a run config once, up front, with errors that name the field and what is allowed."""

from __future__ import annotations

import math
from typing import Any

from ml_collections import config_dict

import kernels
from costlaw.arch import Architecture, default_d_ff

DTYPES = ("bfloat16", "float32")
MESH_AXES = ("data", "fsdp", "tensor")
# Logical names a mesh_rules entry may map: the model's parameter axes plus the batch dimension.
LOGICAL_AXES = ("batch", "vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp")


class ConfigError(ValueError):
    """A config value a user can fix; the message names the field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"config.{field}={value!r} is invalid: {allowed}")


def _positive_int(c: config_dict.ConfigDict, field: str) -> None:
    value = _get(c, field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(field, value, "must be a positive integer")


def _positive_float(c: config_dict.ConfigDict, field: str) -> None:
    value = _get(c, field)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(field, value, "must be a positive number")


def _fraction(c: config_dict.ConfigDict, field: str, *, upper_open: bool = False) -> None:
    value = _get(c, field)
    ok = isinstance(value, (int, float)) and 0 <= value and (value < 1 if upper_open else value <= 1)
    if not ok:
        raise ConfigError(field, value, "must be in [0, 1)" if upper_open else "must be in [0, 1]")


def _choice(c: config_dict.ConfigDict, field: str, allowed: tuple[str, ...]) -> None:
    value = _get(c, field)
    if value not in allowed:
        raise ConfigError(field, value, f"allowed values: {', '.join(allowed)}")


def _get(c: config_dict.ConfigDict, field: str) -> Any:
    for part in field.split("."):
        c = c[part]
    return c


def _check_model(c: config_dict.ConfigDict) -> None:
    for field in ("num_layers", "d_model", "num_q_heads", "num_kv_heads", "head_dim", "vocab_size"):
        _positive_int(c, f"model.{field}")
    m = c.model
    if m.num_q_heads % m.num_kv_heads:
        divisors = [k for k in range(1, m.num_q_heads + 1) if m.num_q_heads % k == 0]
        raise ConfigError(
            "model.num_kv_heads",
            m.num_kv_heads,
            f"must divide model.num_q_heads={m.num_q_heads}; allowed: {', '.join(map(str, divisors))}",
        )
    if m.head_dim % 2:
        raise ConfigError("model.head_dim", m.head_dim, "must be even: RoPE rotates pairs of dimensions")
    if m.d_ff is not None:
        _positive_int(c, "model.d_ff")
    _positive_float(c, "model.rope_theta")
    _positive_float(c, "model.norm_eps")
    _choice(c, "model.dtype", DTYPES)
    _choice(c, "model.param_dtype", DTYPES)
    if not isinstance(m.tie_embeddings, bool):
        raise ConfigError("model.tie_embeddings", m.tie_embeddings, "must be True or False")


def _check_run(c: config_dict.ConfigDict) -> None:
    for field in ("seq_len", "batch_size", "eval_every", "eval_batches", "log_every", "checkpoint_every", "checkpoint_keep"):
        _positive_int(c, field)
    if not isinstance(c.seed, int) or c.seed < 0:
        raise ConfigError("seed", c.seed, "must be a non-negative integer")
    if (c.train_steps is None) == (c.train_tokens is None):
        raise ConfigError(
            "train_steps",
            c.train_steps,
            f"set exactly one of train_steps and train_tokens (train_tokens={c.train_tokens!r})",
        )
    _positive_int(c, "train_steps" if c.train_steps is not None else "train_tokens")
    _choice(c, "attention_impl", ("auto", *kernels.available_impls()))
    _positive_float(c, "optimizer.learning_rate")
    _fraction(c, "optimizer.warmup_frac", upper_open=True)
    _fraction(c, "optimizer.final_lr_frac")
    _choice(c, "optimizer.schedule", ("wsd", "cosine"))
    _choice(c, "optimizer.decay_shape", ("cosine", "linear"))
    _fraction(c, "optimizer.decay_frac")
    o = c.optimizer
    if o.schedule == "wsd" and o.warmup_frac + o.decay_frac > 1:
        raise ConfigError(
            "optimizer.decay_frac", o.decay_frac, f"warmup_frac + decay_frac must be <= 1 (warmup_frac={o.warmup_frac})"
        )
    if not isinstance(o.decay_embeddings, bool):
        raise ConfigError("optimizer.decay_embeddings", o.decay_embeddings, "must be True or False")
    _fraction(c, "optimizer.b1", upper_open=True)
    _fraction(c, "optimizer.b2", upper_open=True)
    for field in ("optimizer.weight_decay", "optimizer.grad_clip"):
        value = _get(c, field)
        if not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(field, value, "must be a non-negative number (0 disables it)")
    _positive_int(c, "grad_accum_steps")
    if c.batch_size % c.grad_accum_steps:
        raise ConfigError(
            "grad_accum_steps", c.grad_accum_steps, f"must divide batch_size={c.batch_size} into equal micro-batches"
        )
    _choice(c, "data.corpus", ("shakespeare",))
    _fraction(c, "data.val_fraction", upper_open=True)
    tok = c.data.tokenizer
    if not (tok == "byte" or (tok.startswith("bpe:") and tok[4:].isdigit() and int(tok[4:]) > 0) or (tok.startswith("json:") and len(tok) > 5)):
        raise ConfigError("data.tokenizer", tok, "allowed: byte, bpe:VOCAB_SIZE (e.g. bpe:8192), json:PATH/tokenizer.json")
    if not isinstance(c.data.worker_count, int) or c.data.worker_count < 0:
        raise ConfigError("data.worker_count", c.data.worker_count, "must be a non-negative integer (0: no worker processes)")
    if not isinstance(c.data.dir, str):
        raise ConfigError("data.dir", c.data.dir, "must be a folder path, or \"\" to prepare data.corpus")


def _check_mesh(c: config_dict.ConfigDict) -> None:
    """Sizes and rules only: the product against the device count is checked by
    experiments.sharding.mesh_shape, because counting devices here would start a backend before
    a multi-process job has joined."""
    for axis in MESH_AXES:
        value = c.mesh[axis]
        if not isinstance(value, int) or isinstance(value, bool) or not (value >= 1 or value == -1):
            raise ConfigError(f"mesh.{axis}", value, "must be a positive integer, or -1 for all remaining devices")
    auto = [axis for axis in MESH_AXES if c.mesh[axis] == -1]
    if len(auto) > 1:
        sizes = ", ".join(f"{a}={c.mesh[a]}" for a in MESH_AXES)
        raise ConfigError(f"mesh.{auto[1]}", -1, f"at most one mesh axis may be -1 (got {sizes})")
    for name in c.mesh_rules:
        rule = c.mesh_rules[name]
        if name not in LOGICAL_AXES:
            raise ConfigError(f"mesh_rules.{name}", rule, f"unknown logical axis; allowed names: {', '.join(LOGICAL_AXES)}")
        if not isinstance(rule, tuple) or any(a not in MESH_AXES for a in rule) or len(set(rule)) != len(rule):
            raise ConfigError(
                f"mesh_rules.{name}", rule, f"must be a tuple of distinct mesh axes from {', '.join(MESH_AXES)} (() replicates)"
            )


def _non_negative_int(c: config_dict.ConfigDict, field: str) -> None:
    value = _get(c, field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(field, value, "must be a non-negative integer")


def _check_eval_and_profile(c: config_dict.ConfigDict) -> None:
    """On the resolved config: the profiler window is checked against train_steps."""
    extra = c.eval_contexts
    if not isinstance(extra, (tuple, list)) or any(not isinstance(t, int) or isinstance(t, bool) or t <= 0 for t in extra):
        raise ConfigError("eval_contexts", extra, "must be a tuple of positive integers (context lengths in tokens), () for none")
    _non_negative_int(c, "profile.start_step")
    _non_negative_int(c, "profile.num_steps")
    if c.profile.num_steps and c.profile.start_step >= c.train_steps:
        raise ConfigError(
            "profile.start_step",
            c.profile.start_step,
            f"must be < train_steps={c.train_steps} to trace any step (or set profile.num_steps=0)",
        )


def validate(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """Check every field, then return a resolved copy (d_ff and train_steps filled in).

    Raises ConfigError naming the first bad field. The input is not modified.
    """
    _check_model(config)
    _check_run(config)
    _check_mesh(config)
    c = config_dict.ConfigDict(config.to_dict())  # unlocked, free of placeholders' references
    if c.model.d_ff is None:
        c.model.d_ff = default_d_ff(c.model.d_model)
    if c.train_steps is None:
        c.train_steps = math.ceil(c.train_tokens / (c.batch_size * c.seq_len))
    _check_eval_and_profile(c)
    return c


def architecture(config: config_dict.ConfigDict) -> Architecture:
    """The costlaw architecture of a (validated) config: the link between the model and the cost model."""
    m = config.model
    return Architecture(
        num_layers=m.num_layers,
        d_model=m.d_model,
        num_q_heads=m.num_q_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.head_dim,
        vocab_size=m.vocab_size,
        d_ff=m.d_ff,
        tie_embeddings=m.tie_embeddings,
    )
