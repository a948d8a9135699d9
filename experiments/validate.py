"""Validate and resolve a run config once, up front, with errors that name the field and what is allowed."""

from __future__ import annotations

import math
from typing import Any

from ml_collections import config_dict

import kernels
from costlaw.arch import Architecture, default_d_ff

DTYPES = ("bfloat16", "float32")


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
    for field in ("seq_len", "batch_size", "eval_every", "eval_batches", "log_every"):
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
    _fraction(c, "optimizer.b1", upper_open=True)
    _fraction(c, "optimizer.b2", upper_open=True)
    for field in ("optimizer.weight_decay", "optimizer.grad_clip"):
        value = _get(c, field)
        if not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(field, value, "must be a non-negative number (0 disables it)")
    _choice(c, "data.corpus", ("shakespeare",))
    _fraction(c, "data.val_fraction", upper_open=True)


def validate(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
    """Check every field, then return a resolved copy (d_ff and train_steps filled in).

    Raises ConfigError naming the first bad field. The input is not modified.
    """
    _check_model(config)
    _check_run(config)
    c = config_dict.ConfigDict(config.to_dict())  # unlocked, free of placeholders' references
    if c.model.d_ff is None:
        c.model.d_ff = default_d_ff(c.model.d_model)
    if c.train_steps is None:
        c.train_steps = math.ceil(c.train_tokens / (c.batch_size * c.seq_len))
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
