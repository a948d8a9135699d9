"""Train a GQA language model from a config: python -m experiments.train --config=configs/FILE.py --workdir=DIR."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from absl import app, flags
from flax import nnx
from ml_collections import config_dict, config_flags

from costlaw.arch import param_counts
from costlaw.costs import training_flops_per_token
from experiments import checkpoint, cli, data, distributed, metrics, optim, pipeline, sharding, validate
from experiments import evaluate as evaluate_lib
from experiments import model as model_lib

RECORD_SCHEMA_VERSION = 1



@dataclasses.dataclass
class TrainResult:
    """What a run produced: the loss history and held-out losses, also written to record.json."""

    losses: list[tuple[int, float]]
    eval_losses: list[dict]  # {"step", "context", "loss", "tokens"}
    record_path: pathlib.Path | None  # None on processes other than 0
    stopped_early: bool = False  # SIGTERM: a checkpoint was saved and the run can be resumed


class _Rate:
    """Tokens/s and ETA for progress lines. The first step of a process includes compilation, so
    rates start after it; evaluation and checkpoint time is excluded so the rate stays the training rate."""

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

    def line(self, step: int) -> tuple[str, float | None]:
        """The progress text and tokens/s (None while unknown)."""
        now = time.perf_counter()
        if self.base_time is None:
            self.base_time, self.base_step = now, step
            return f"step {step:>6}/{self.total}  first step (incl. compile) {now - self.start:.1f}s", None
        busy = now - self.base_time - self.excluded
        steps_per_s = (step - self.base_step) / busy
        eta = (self.total - step) / steps_per_s
        rate = steps_per_s * self.tokens_per_step
        return f"step {step:>6}/{self.total}  {rate:,.0f} tok/s  eta {eta:,.0f}s", rate


def _eval_batches(config: config_dict.ConfigDict, prepared: data.Prepared, process: distributed.ProcessInfo) -> dict[int, list[np.ndarray]]:
    """This process's rows of the same held-out windows at every evaluation, per context length."""
    return {
        s.context: pipeline.eval_batches(
            prepared, context=s.context, batch_size=max(1, s.batch_size // process.count), num_batches=s.num_batches,
            process_index=process.index, process_count=process.count,
        ).batches
        for s in evaluate_lib.plan(config)
    }


def _prepared_data(config: config_dict.ConfigDict, workdir: pathlib.Path, process: distributed.ProcessInfo, say) -> data.Prepared:
    """config.data.dir when given; otherwise the embedded corpus, prepared once under WORKDIR/data."""
    if config.data.dir:
        return data.open_prepared(config.data.dir)
    data_dir = workdir / "data"
    if process.is_primary:
        data.prepare(data.corpus_documents(config.data.corpus), data_dir, tokenizer=config.data.tokenizer,
                     val_fraction=config.data.val_fraction, echo=say)
    if process.count > 1:
        multihost_utils.sync_global_devices("data prepared")
    return data.open_prepared(data_dir)


class _StopFlag:
    """Set by SIGTERM (preemptible TPU VMs and spot GPUs send it): the loop saves and exits cleanly."""

    def __init__(self):
        self.set = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.set = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def train(
    config: config_dict.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    echo: Callable[[str], Any] = print,
    process: distributed.ProcessInfo | None = None,
) -> TrainResult:
    """Validate the config, train (resuming from the newest readable checkpoint in workdir),
    evaluate on held-out data at several contexts, and write TensorBoard events and record.json.

    Every process of a multi-process job calls this; only process 0 prints and writes records.
    """
    config = validate.validate(config)
    process = process or distributed.ProcessInfo(jax.process_index(), jax.process_count())
    say = echo if process.is_primary else (lambda *_: None)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say("config:\n  " + "\n  ".join(f"{k} = {v}" for k, v in sorted(_flatten(config.to_dict()).items())))

    prepared = _prepared_data(config, workdir, process, say)
    if prepared.vocab_size > config.model.vocab_size:
        raise validate.ConfigError("model.vocab_size", config.model.vocab_size, f"must be >= the tokenizer's {prepared.vocab_size}")
    if config.batch_size % process.count:
        raise validate.ConfigError("batch_size", config.batch_size, f"must be a multiple of the {process.count} processes")

    cfg = model_lib.ModelConfig.from_config(config)
    arch = validate.architecture(config)
    mesh = sharding.make_mesh(config)
    abstract = sharding.abstract_model(cfg)
    counts = param_counts(arch)
    counted = model_lib.count_params(abstract)
    if counted != counts.total:  # the cost model is only worth trusting if this holds
        raise AssertionError(f"cost model counts {counts.total} parameters, the model has {counted}")
    tokens_per_step = config.batch_size * config.seq_len
    flops_per_token = training_flops_per_token(arch, config.seq_len).total
    say(
        f"parameters: total {counts.total:,}  embedding {counts.embedding:,}  non-embedding {counts.non_embedding:,}\n"
        f"training FLOPs: {flops_per_token:,.0f} per token, {flops_per_token * tokens_per_step:.3e} per step, "
        f"{flops_per_token * tokens_per_step * config.train_steps:.3e} per run "
        f"({config.train_steps} steps x {tokens_per_step:,} tokens)\n"
        f"mesh: {dict(mesh.shape)} over {jax.device_count()} devices in {process.count} process(es)"
    )

    graphdef = nnx.graphdef(abstract)
    rules = config.mesh_rules
    p_shard = sharding.param_shardings(abstract, mesh, rules)
    optimizer, schedule = optim.make_optimizer(config, optim.decay_mask(abstract, config.optimizer.decay_embeddings))
    abstract_params = nnx.to_pure_dict(nnx.state(abstract))
    o_shard = sharding.opt_state_shardings(optimizer, abstract_params, mesh, p_shard)
    b_shard = sharding.batch_sharding(mesh, rules)
    train_step = sharding.make_train_step(
        graphdef, optimizer, mesh, p_shard, o_shard, b_shard, grad_accum_steps=config.grad_accum_steps, schedule=schedule
    )
    host_data = pipeline.train_iterator(
        prepared, seq_len=config.seq_len, batch_size=config.batch_size // process.count, seed=config.seed,
        process_index=process.index, process_count=process.count, worker_count=config.data.worker_count,
    )

    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint_keep)
    restored = ckpt.restore_latest(
        checkpoint.abstract_like(abstract_params, p_shard),
        checkpoint.abstract_like(jax.eval_shape(optimizer.init, abstract_params), o_shard),
    )
    if restored is None:
        params = sharding.init_params(cfg, config.seed, p_shard)
        opt_state = sharding.init_opt_state(optimizer, params, o_shard)
        start, losses, eval_losses = 0, [], []
    else:
        params, opt_state, start = restored.params, restored.opt_state, restored.step
        host_data.set_state({"batches_read": restored.data_state["batches_read"]})
        losses = [tuple(x) for x in restored.data_state["losses"]]
        eval_losses = list(restored.data_state["eval_losses"])
        say(f"resumed from the checkpoint after step {start} in {ckpt.directory}"
            + (" (the run had finished: nothing left to train)" if start >= config.train_steps else ""))

    def save(step: int, *, wait: bool = False) -> None:
        ckpt.save(step, params, opt_state, {**host_data.get_state(), "losses": losses, "eval_losses": eval_losses}, wait=wait)

    writer = metrics.MetricsWriter(workdir / "tb", is_primary=process.is_primary)
    writer.hparams(metrics.run_hparams(config, counts.non_embedding))
    trace = metrics.TraceWindow(config.profile.start_step, config.profile.num_steps, workdir / "tb")
    deferred = metrics.DeferredMetrics()
    val_batches = _eval_batches(config, prepared, process)
    timer = _Rate(tokens_per_step, config.train_steps)
    stop = _StopFlag()

    def record_step(m: metrics.StepMetrics) -> None:
        due = m.step == start + 1 or m.step % config.log_every == 0 or m.step == config.train_steps
        if not due:
            return
        text, rate = timer.line(m.step)
        v = m.values
        say(f"{text}  loss {v['loss']:.4f}  lr {v['lr']:.2e}  |g| {v['grad_norm']:.3f}")
        writer.train(m.step, loss=v["loss"], learning_rate=v["lr"], grad_norm=v["grad_norm"], tokens_per_s=rate,
                     step_time_s=None if rate is None else tokens_per_step / rate)
        losses.append((m.step, v["loss"]))

    completed = False
    step = start
    try:
        for step in range(start + 1, config.train_steps + 1):
            batch = sharding.shard_batch(next(host_data), b_shard)
            with trace.step(step, params):
                params, opt_state, step_metrics = train_step(params, opt_state, batch)
            if (m := deferred.push(step, step_metrics)) is not None:
                record_step(m)
            last = step == config.train_steps
            evaluate_now = step % config.eval_every == 0 or last
            save_now = step % config.checkpoint_every == 0 or last or stop.set
            if evaluate_now or save_now:
                if (m := deferred.flush()) is not None:  # check this step's loss before keeping its state
                    record_step(m)
            if evaluate_now:
                with timer.paused():
                    batches = {c: [sharding.shard_batch(b, b_shard) for b in bs] for c, bs in val_batches.items()}
                    rows = evaluate_lib.evaluate(graphdef, params, batches)
                eval_losses.extend({"step": step, **r} for r in rows)
                writer.evaluation(step, rows)
                say(f"eval  step {step:>6}  " + "  ".join(f"T={r['context']}: {r['loss']:.4f}" for r in rows)
                    + f"  ({sum(r['tokens'] for r in rows):,} tokens)")
            if save_now:
                with timer.paused():
                    save(step, wait=last or stop.set)
            if stop.set:
                say(f"SIGTERM: saved a checkpoint after step {step}; run the same command to resume")
                break
        if (m := deferred.flush()) is not None:
            record_step(m)
        completed = not stop.set
    finally:
        host_data.close()
        stop.restore()
        trace.close(params)
        writer.close(completed=completed)
        ckpt.close()

    record_path = None
    if process.is_primary and completed:
        record = {
            "schema_version": RECORD_SCHEMA_VERSION,
            "kind": "gqa-costlaw-run",
            "config": config.to_dict(),
            "architecture": dataclasses.asdict(arch),
            "params": dataclasses.asdict(counts),
            "train_context": config.seq_len,
            "training_flops_per_token": flops_per_token,
            "train_tokens": config.train_steps * tokens_per_step,
            "losses": losses,
            "eval_losses": eval_losses,
            "wall_seconds": time.perf_counter() - timer.start,
            "jax_version": jax.__version__,
            "package_version": _package_version(),
            "git_commit": _git_commit(),
            "devices": [str(d) for d in jax.devices()],
            "processes": process.count,
            "data": {
                "tokenizer": prepared.tokenizer_spec,
                "inputs_sha256": prepared.inputs_sha256,
                "splits": {k: dataclasses.asdict(v) for k, v in prepared.splits.items()},
            },
        }
        record_path = workdir / "record.json"
        record_path.write_text(json.dumps(record, indent=2))
        say(f"wrote {record_path}")
    return TrainResult(losses, eval_losses, record_path, stopped_early=stop.set)


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
        process = distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
        train(FLAGS.config, FLAGS.workdir, process=process)
    except (validate.ConfigError, data.DataError, FloatingPointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """Console-script entry point; flags are defined here so importing this module defines none."""
    config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/cpu_tiny.py.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Folder for this run's outputs (created if missing); a rerun resumes it.")
    flags.DEFINE_string("coordinator", None, "Multi-process: HOST:PORT of process 0 (with --num_processes, --process_id).")
    flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes the job has.")
    flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0-based.")
    cli.run_main(main)


if __name__ == "__main__":
    run()
