"""Synthetic run records drawn from known loss laws, in the trainer's exact record format, for tests, benchmarks and demos."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from costlaw.arch import PAPER_HEAD_DIM, PAPER_VOCAB_SIZE, Architecture, ladder_shape, param_counts
from costlaw.costs import training_flops_per_token
from costlaw.laws import Heads, LossLaw
from costlaw.records import RECORD_KIND, SUPPORTED_SCHEMA_VERSION

# Every (n_q, n_kv) with powers of two up to 32 and n_kv <= n_q: the paper's 21 candidates.
PAPER_HEADS: tuple[Heads, ...] = tuple((q, k) for q in (1, 2, 4, 8, 16, 32) for k in (1, 2, 4, 8, 16, 32) if k <= q)
TRAINED_LADDER = ("3M", "19M", "85M", "150M", "200M", "470M", "680M", "1.2B")
BATCH_SIZE = 64  # sequences; with an 8K context this is the paper's 512K tokens per step


def smooth_laws(heads: Sequence[Heads] = PAPER_HEADS, *, E: float = 1.8, n_ref: float = 1e8,
                reducible: float = 1.3, q_slope: float = -0.04, kv_slope: float = -0.03,
                b: float = 0.3, b_slope: float = 0.01) -> dict[Heads, LossLaw]:
    """Laws whose log reducible loss at n_ref and log b are linear in log2 n_q and log2 n_kv.

    More heads of either kind lower the loss, as in the paper; the defaults put the 85M MHA
    loss near 3.0 nats. This is the form costlaw.fit.fit_joint assumes, so it recovers these.
    """
    laws = {}
    for n_q, n_kv in heads:
        x, y = math.log2(n_q), math.log2(n_kv)
        exponent = b * math.exp(b_slope * (x + y))
        excess = reducible * math.exp(q_slope * x + kv_slope * y)
        laws[(n_q, n_kv)] = LossLaw(a=n_ref * excess ** (1.0 / exponent), b=exponent, E=E)
    return laws


def _architecture(size: str | tuple[int, int], heads: Heads) -> tuple[str, Architecture]:
    if isinstance(size, str):
        shape = ladder_shape(size)
        name, layers, d_model = size, shape.num_layers, shape.d_model
    else:
        layers, d_model = size
        name = f"L{layers}-d{d_model}"
    arch = Architecture(num_layers=layers, d_model=d_model, num_q_heads=heads[0], num_kv_heads=heads[1],
                        head_dim=PAPER_HEAD_DIM, vocab_size=PAPER_VOCAB_SIZE)
    return name, arch


def _config(arch: Architecture, seq_len: int, train_steps: int, seed: int, train_tokens: int) -> dict:
    """The resolved config the trainer would record for a paper-style run (configs/base.py fields)."""
    return {
        "model": {
            "num_layers": arch.num_layers, "d_model": arch.d_model, "num_q_heads": arch.num_q_heads,
            "num_kv_heads": arch.num_kv_heads, "head_dim": arch.head_dim, "d_ff": arch.d_ff,
            "vocab_size": arch.vocab_size, "tie_embeddings": arch.tie_embeddings, "rope_theta": 500000.0,
            "norm_eps": 1e-6, "dtype": "bfloat16", "param_dtype": "float32",
        },
        "seq_len": seq_len, "batch_size": BATCH_SIZE, "train_steps": train_steps, "train_tokens": train_tokens,
        "seed": seed, "attention_impl": "auto",
        "optimizer": {"learning_rate": 1e-3, "warmup_frac": 0.1, "final_lr_frac": 0.1, "b1": 0.9, "b2": 0.95,
                      "weight_decay": 0.1, "grad_clip": 1.0},
        "data": {"corpus": "synthetic", "val_fraction": 0.1},
        "eval_every": max(1, train_steps // 2), "eval_batches": 4, "log_every": 50,
    }


def synthetic_record(law: LossLaw, size: str | tuple[int, int], heads: Heads, *, rng: np.random.Generator,
                     noise: float = 0.005, seed: int = 0, train_context: int = 8192, tokens_per_param: float = 20,
                     extra_contexts: Sequence[int] = (32768,), context_exponent: float = 0.005) -> dict:
    """One run record as experiments/train.py writes it, with a final loss drawn from `law`.

    The final held-out loss is law.loss(N) times lognormal noise (sigma `noise`). Other contexts
    scale it by (T / train_context)^-context_exponent, the same for every head configuration, so
    relative loss gaps are flat across contexts (the paper's assumption). An evaluation at half
    the steps, with a higher loss, precedes the final one.
    """
    _, arch = _architecture(size, heads)
    counts = param_counts(arch)
    tokens_per_step = BATCH_SIZE * train_context
    steps = max(2, math.ceil(tokens_per_param * counts.non_embedding / tokens_per_step))
    loss = law.loss(counts.non_embedding) * math.exp(noise * rng.standard_normal())
    eval_tokens = 4 * tokens_per_step
    final = [{"step": steps, "context": t, "loss": loss * (t / train_context) ** -context_exponent,
              "tokens": eval_tokens} for t in (train_context, *extra_contexts)]
    midway = {"step": steps // 2, "context": train_context, "loss": loss * 1.05, "tokens": eval_tokens}
    flops = training_flops_per_token(arch, train_context).total
    return {
        "schema_version": SUPPORTED_SCHEMA_VERSION,
        "kind": RECORD_KIND,
        "config": _config(arch, train_context, steps, seed, steps * tokens_per_step),
        "architecture": dataclasses.asdict(arch),
        "params": dataclasses.asdict(counts),
        "train_context": train_context,
        "training_flops_per_token": flops,
        "train_tokens": steps * tokens_per_step,
        "losses": [[1, math.log(arch.vocab_size)], [steps // 2, loss * 1.06], [steps, loss * 1.01]],
        "eval_losses": [midway, *final],
        "wall_seconds": 0.0,
        "jax_version": None,
        "package_version": None,
        "git_commit": None,
        "devices": ["synthetic"],
        "processes": 1,
        "data": {"tokenizer": "synthetic", "inputs_sha256": None, "splits": {}},
    }


def synthetic_records(laws: Mapping[Heads, LossLaw], sizes: Sequence[str | tuple[int, int]] = TRAINED_LADDER, *,
                      noise: float = 0.005, seed: int = 0, seeds: int = 1, out_dir: Path | str | None = None,
                      train_context: int = 8192, tokens_per_param: float = 20,
                      extra_contexts: Sequence[int] = (32768,)) -> list[Path] | list[dict]:
    """Records for every head configuration in `laws` x every size (ladder name or (L, d)) x `seeds` seeds.

    Returns the records, or with out_dir the paths written, one folder per run like a trainer
    workdir: out_dir/<size>_q<n_q>_kv<n_kv>_s<seed>/record.json.
    """
    rng = np.random.default_rng(seed)
    out = []
    for heads, law in laws.items():
        for size in sizes:
            for run_seed in range(seeds):
                record = synthetic_record(law, size, heads, rng=rng, noise=noise, seed=run_seed,
                                          train_context=train_context, tokens_per_param=tokens_per_param,
                                          extra_contexts=extra_contexts)
                if out_dir is None:
                    out.append(record)
                    continue
                name = _architecture(size, heads)[0]
                path = Path(out_dir) / f"{name}_q{heads[0]}_kv{heads[1]}_s{run_seed}" / "record.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=2))
                out.append(path)
    return out
