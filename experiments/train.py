"""Train a GQA language model from a config: python -m experiments.train --config=configs/FILE.py --workdir=DIR."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import pathlib
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_dict, config_flags

from costlaw.arch import param_counts
from costlaw.costs import training_flops_per_token
from experiments import cli, data, model as model_lib, validate

RECORD_SCHEMA_VERSION = 1



@dataclasses.dataclass
class TrainResult:
    """What a run produced: the loss history and held-out losses, also written to record.json."""

    losses: list[tuple[int, float]]
    eval_losses: list[dict]  # {"step", "context", "loss", "tokens"}
    record_path: pathlib.Path


def decay_mask(model: nnx.Module, params: dict) -> dict:
    """True for matrices that get weight decay: >= 2 dims and not an embedding (no 'vocab' axis)."""
    axes = model_lib.logical_axes(model)

    def is_matrix(path, leaf):
        names = axes["/".join(str(p.key) for p in path)]
        return leaf.ndim >= 2 and model_lib.VOCAB not in names

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(config: config_dict.ConfigDict, mask: dict) -> tuple[optax.GradientTransformation, Callable]:
    o, steps = config.optimizer, config.train_steps
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=o.learning_rate,
        warmup_steps=int(o.warmup_frac * steps),
        decay_steps=steps,
        end_value=o.learning_rate * o.final_lr_frac,
    )
    chain = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=mask))
    return optax.chain(*chain), schedule


def loss_fn(graphdef: nnx.GraphDef, params: dict, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (nats) over tokens [B, T+1]."""
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


class _Rate:
    """Tokens/s and ETA for progress lines. Step 1 includes compilation, so rates start after it;
    evaluation time is excluded so the training rate stays the training rate."""

    def __init__(self, tokens_per_step: int, total_steps: int):
        self.tokens_per_step, self.total = tokens_per_step, total_steps
        self.start = time.perf_counter()
        self.base_time = self.base_step = None
        self.excluded = 0.0

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        yield
        self.excluded += time.perf_counter() - t

    def line(self, step: int) -> str:
        now = time.perf_counter()
        if self.base_time is None:
            self.base_time, self.base_step = now, step
            return f"step {step:>6}/{self.total}  first step (incl. compile) {now - self.start:.1f}s"
        busy = now - self.base_time - self.excluded
        steps_per_s = (step - self.base_step) / busy
        eta = (self.total - step) / steps_per_s
        return f"step {step:>6}/{self.total}  {steps_per_s * self.tokens_per_step:,.0f} tok/s  eta {eta:,.0f}s"


def train(config: config_dict.ConfigDict, workdir: str | pathlib.Path, *, echo: Callable[[str], Any] = print) -> TrainResult:
    """Validate the config, train, evaluate on held-out data, and write workdir/record.json."""
    config = validate.validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    echo("config:\n  " + "\n  ".join(f"{k} = {v}" for k, v in sorted(_flatten(config.to_dict()).items())))

    splits = data.load_shakespeare(config.data.val_fraction)
    if splits.vocab_size > config.model.vocab_size:
        raise validate.ConfigError("model.vocab_size", config.model.vocab_size, f"must be >= the tokenizer's {splits.vocab_size}")

    cfg = model_lib.ModelConfig.from_config(config)
    model = model_lib.Transformer(cfg, nnx.Rngs(config.seed))
    counts = param_counts(validate.architecture(config))
    counted = model_lib.count_params(model)
    if counted != counts.total:  # the cost model is only worth trusting if this holds
        raise AssertionError(f"cost model counts {counts.total} parameters, the model has {counted}")
    tokens_per_step = config.batch_size * config.seq_len
    flops_per_token = training_flops_per_token(validate.architecture(config), config.seq_len).total
    echo(
        f"parameters: total {counts.total:,}  embedding {counts.embedding:,}  non-embedding {counts.non_embedding:,}\n"
        f"training FLOPs: {flops_per_token:,.0f} per token, {flops_per_token * tokens_per_step:.3e} per step, "
        f"{flops_per_token * tokens_per_step * config.train_steps:.3e} per run "
        f"({config.train_steps} steps x {tokens_per_step:,} tokens)"
    )

    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    optimizer, schedule = make_optimizer(config, decay_mask(model, params))
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(graphdef, p, tokens))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

    eval_loss = jax.jit(lambda p, t: loss_fn(graphdef, p, t))
    rng = np.random.default_rng(config.seed)
    eval_rng_seed = config.seed + 1  # same held-out windows at every evaluation

    def evaluate(params) -> float:
        erng = np.random.default_rng(eval_rng_seed)
        batches = [data.sample_windows(splits.val, config.batch_size, config.seq_len + 1, erng) for _ in range(config.eval_batches)]
        return float(np.mean([eval_loss(params, b) for b in batches]))

    losses, eval_losses = [], []
    start = time.perf_counter()
    timer = _Rate(tokens_per_step, config.train_steps)
    for step in range(1, config.train_steps + 1):
        batch = data.sample_windows(splits.train, config.batch_size, config.seq_len + 1, rng)
        params, opt_state, loss, grad_norm = train_step(params, opt_state, batch)
        if step == 1 or step % config.log_every == 0 or step == config.train_steps:
            loss = float(loss)  # blocks on this step only when a line is due
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {step}; lower optimizer.learning_rate or check the data")
            # optax reads the schedule at the 0-based count, so step s ran with schedule(s - 1)
            echo(f"{timer.line(step)}  loss {loss:.4f}  lr {float(schedule(step - 1)):.2e}  |g| {float(grad_norm):.3f}")
            losses.append((step, loss))
        if step % config.eval_every == 0 or step == config.train_steps:
            with timer.paused():
                loss = evaluate(params)
            n_eval = config.eval_batches * tokens_per_step
            eval_losses.append({"step": step, "context": config.seq_len, "loss": loss, "tokens": n_eval})
            echo(f"eval  step {step:>6}  held-out loss {loss:.4f} at T={config.seq_len} ({n_eval:,} tokens)")

    record = {
        "schema_version": RECORD_SCHEMA_VERSION,
        "kind": "gqa-costlaw-run",
        "config": config.to_dict(),
        "architecture": dataclasses.asdict(validate.architecture(config)),
        "params": dataclasses.asdict(counts),
        "train_context": config.seq_len,
        "training_flops_per_token": flops_per_token,
        "train_tokens": config.train_steps * tokens_per_step,
        "losses": losses,
        "eval_losses": eval_losses,
        "wall_seconds": time.perf_counter() - start,
        "jax_version": jax.__version__,
        "package_version": _package_version(),
        "git_commit": _git_commit(),
        "devices": [str(d) for d in jax.devices()],
    }
    record_path = workdir / "record.json"
    record_path.write_text(json.dumps(record, indent=2))
    echo(f"wrote {record_path}")
    return TrainResult(losses, eval_losses, record_path)


def _package_version() -> str | None:
    try:
        return importlib.metadata.version("gqa-costlaw")
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The commit of the checkout this code runs from, so a record can be reproduced."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=pathlib.Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("both --config and --workdir are required")
    try:
        train(FLAGS.config, FLAGS.workdir)
    except (validate.ConfigError, data.DataError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """Console-script entry point; flags are defined here so importing this module defines none."""
    config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/cpu_tiny.py.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Folder for this run's outputs (created if missing).")
    cli.run_main(main)


if __name__ == "__main__":
    run()
