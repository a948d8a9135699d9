"""Cost a configuration without training it: analytic FLOPs and bytes beside the compiler's, per context.

python -m experiments.profile --config=configs/paper.py:470M --context_lengths=2048,8192 [--json]

Everything runs on abstract shapes (jax.eval_shape): nothing is allocated, so paper-scale models
compile on a laptop CPU. What each column counts:

The profile compiles with the dense XLA attention (--attention_impl=xla, the default), because
only then is every attention matmul a dot the compiler counts: the blocked XLA path hides them in
loops (counted once per loop body) and the Pallas kernels in custom calls. Other impls can be
profiled for memory; their "compiler dots" then cover the projections and the output layer only.

* analytic (dense): costlaw's matmul-only count of what the compiled program executes. The XLA
  attention computes every query-key score and masks afterwards, so a forward pass over T tokens
  is T * C_infer(T) = T * (2N + 4*T*L*d_h*n_q) with N the matmul parameters (output projection
  included once); a training step is three times that (each matmul has two in the backward pass).
* analytic (causal): the same with causal halving (T_bar = T/2, the paper's training count), i.e.
  what a kernel that skips masked blocks executes. This is the number to use for MFU.
* compiler dots: 2 * |result| * |contracted| summed over every dot in the optimised HLO. It must
  match analytic (dense) closely: elementwise work is excluded from both.
* compiler total: XLA's cost_analysis() 'flops', which adds elementwise ops (softmax, norms, RoPE,
  SiLU, the optimizer update), so it exceeds the matmul count by a few percent.
* memory: XLA's memory_analysis(): arguments (parameters, optimizer state, tokens), outputs and
  temporaries (activations and scratch); analytic state bytes are costlaw's parameter bytes in the
  config's param_dtype, plus Adam's two float32 moments for a training step.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx
from ml_collections import config_dict, config_flags

from costlaw.arch import param_counts
from costlaw.costs import dtype_bytes, inference_flops, training_flops_per_token
from experiments import cli, hlo, model as model_lib, optim, sharding, validate



@dataclasses.dataclass(frozen=True)
class PassProfile:
    """Analytic and compiler counts for one compiled pass (forward or training step) at one context."""

    pass_name: str
    attention_impl: str
    context: int
    batch_size: int
    analytic_dense_flops: float
    analytic_causal_flops: float
    compiler_dot_flops: int
    compiler_total_flops: float
    analytic_state_bytes: float
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    compile_seconds: float

    @property
    def dot_ratio(self) -> float:
        """compiler dots / analytic dense: 1.0 means the cost model counts every matmul XLA runs."""
        return self.compiler_dot_flops / self.analytic_dense_flops

    @property
    def total_ratio(self) -> float:
        """compiler total / analytic dense: above 1 by the elementwise share."""
        return self.compiler_total_flops / self.analytic_dense_flops

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "dot_ratio": self.dot_ratio, "total_ratio": self.total_ratio}


def abstract_model(config: config_dict.ConfigDict) -> tuple[nnx.GraphDef, dict, nnx.Module]:
    """Graph definition, parameter shapes (jax.ShapeDtypeStruct) and the abstract module."""
    model = sharding.abstract_model(model_lib.ModelConfig.from_config(config))
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state), model


def _compiler_numbers(compiled: jax.stages.Compiled) -> dict[str, float]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    return {
        "compiler_dot_flops": hlo.dot_flops(compiled.as_text()),
        "compiler_total_flops": float(cost.get("flops", float("nan"))),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
    }


def _compile(fn, *args) -> tuple[jax.stages.Compiled, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def profile_forward(config: config_dict.ConfigDict, context: int, batch_size: int = 1) -> PassProfile:
    """Compile the forward pass (logits for `context` tokens) and compare with costlaw."""
    graphdef, params, _ = abstract_model(config)
    tokens = jax.ShapeDtypeStruct((batch_size, context), jnp.int32)
    compiled, seconds = _compile(lambda p, t: nnx.merge(graphdef, p)(t), params, tokens)
    arch = validate.architecture(config)
    n_tokens = batch_size * context
    return PassProfile(
        pass_name="forward",
        attention_impl=config.attention_impl,
        context=context,
        batch_size=batch_size,
        analytic_dense_flops=n_tokens * inference_flops(arch, context).total,
        analytic_causal_flops=n_tokens * training_flops_per_token(arch, context).total / 3,
        analytic_state_bytes=param_counts(arch).total * dtype_bytes(config.model.param_dtype),
        compile_seconds=seconds,
        **_compiler_numbers(compiled),
    )


def profile_train_step(config: config_dict.ConfigDict, context: int, batch_size: int = 1) -> PassProfile:
    """Compile one optimizer step (loss, gradients, AdamW update) and compare with costlaw."""
    config = config_dict.ConfigDict(config.to_dict())
    config.train_steps = max(config.train_steps, 1)
    graphdef, params, model = abstract_model(config)
    optimizer, _ = optim.make_optimizer(config, optim.decay_mask(model, config.optimizer.decay_embeddings))
    opt_state = jax.eval_shape(optimizer.init, params)
    tokens = jax.ShapeDtypeStruct((batch_size, context + 1), jnp.int32)

    def step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(lambda p: optim.next_token_loss(graphdef, p, tokens))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state, loss

    compiled, seconds = _compile(step, params, opt_state, tokens)
    arch = validate.architecture(config)
    n_tokens = batch_size * context
    n_params = param_counts(arch).total
    return PassProfile(
        pass_name="train_step",
        attention_impl=config.attention_impl,
        context=context,
        batch_size=batch_size,
        analytic_dense_flops=n_tokens * training_flops_per_token(arch, context, causal=False).total,
        analytic_causal_flops=n_tokens * training_flops_per_token(arch, context).total,
        # parameters in their dtype plus Adam's two float32 moments
        analytic_state_bytes=n_params * (dtype_bytes(config.model.param_dtype) + 2 * dtype_bytes("float32")),
        compile_seconds=seconds,
        **_compiler_numbers(compiled),
    )


def profile(
    config: config_dict.ConfigDict,
    context_lengths: list[int],
    *,
    batch_size: int = 1,
    train_step: bool = True,
    attention_impl: str = "xla",
    echo=None,
) -> list[PassProfile]:
    """Validate the config, then profile the forward pass (and a training step) at each context.

    attention_impl replaces config.attention_impl: "xla" (default) keeps every matmul visible.
    """
    config = validate.validate(config)
    config.attention_impl = attention_impl
    config = validate.validate(config)
    results = []
    for context in context_lengths:
        passes = [profile_forward] + ([profile_train_step] if train_step else [])
        for fn in passes:
            results.append(fn(config, context, batch_size))
            if echo:
                echo(f"compiled {results[-1].pass_name} at T={context} in {results[-1].compile_seconds:.1f}s")
    return results


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3f} {prefix}{unit}"
    return f"{x:.0f} {unit}"


def format_table(results: list[PassProfile]) -> str:
    header = ("pass", "T", "B", "analytic dense", "compiler dots", "dots/analytic", "compiler total", "total/analytic", "analytic causal", "args", "temp", "analytic state")
    rows = [
        (
            r.pass_name, str(r.context), str(r.batch_size), _si(r.analytic_dense_flops, "FLOP"), _si(r.compiler_dot_flops, "FLOP"),
            f"{r.dot_ratio:.4f}", _si(r.compiler_total_flops, "FLOP"), f"{r.total_ratio:.4f}", _si(r.analytic_causal_flops, "FLOP"),
            _si(r.argument_bytes, "B"), _si(r.temp_bytes, "B"), _si(r.analytic_state_bytes, "B"),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows])


def _parse_contexts(values: list[str] | None, default: int) -> list[int]:
    if not values:
        return [default]
    try:
        contexts = [int(v) for v in values]
    except ValueError:
        contexts = []
    if not contexts or min(contexts) <= 0:
        raise validate.ConfigError("context_lengths (flag)", ",".join(values), "a comma-separated list of positive integers, e.g. 2048,8192")
    return contexts


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/paper.py:150M")
    try:
        contexts = _parse_contexts(FLAGS.context_lengths, FLAGS.config.seq_len)
        if FLAGS.batch_size <= 0:
            raise validate.ConfigError("batch_size (flag)", FLAGS.batch_size, "must be a positive integer")
        echo = None if FLAGS.json else (lambda s: print(s, file=sys.stderr))
        results = profile(
            FLAGS.config, contexts, batch_size=FLAGS.batch_size, train_step=FLAGS.train_step,
            attention_impl=FLAGS.attention_impl, echo=echo,
        )
    except validate.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if FLAGS.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(format_table(results))


def run() -> None:
    """Console-script entry point; flags are defined here so importing this module defines none."""
    config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/paper.py:150M.", lock_config=True)
    flags.DEFINE_list("context_lengths", None, "Context lengths to profile (default: the config's seq_len).")
    flags.DEFINE_integer("batch_size", 1, "Sequences per profiled step.")
    flags.DEFINE_bool("train_step", True, "Also compile one training step at each context.")
    flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
    flags.DEFINE_string("attention_impl", "xla", "Attention impl to compile; 'xla' keeps every matmul countable.")
    cli.run_main(main)


if __name__ == "__main__":
    run()
