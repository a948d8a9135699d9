"""Config validation: every bad value is caught up front, named, and exits non-zero from the command line."""

import math
import os
import subprocess
import sys

import pytest

import kernels
from configs import base, cpu_tiny, paper
from costlaw.arch import PAPER_LADDER, Architecture, param_counts
from experiments import validate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BAD = [
    # (override, field named in the message, words of the allowed-values part)
    ("--config.model.num_kv_heads=3", "model.num_kv_heads", "must divide model.num_q_heads=4; allowed: 1, 2, 4"),
    ("--config.model.head_dim=33", "model.head_dim", "must be even: RoPE"),
    ("--config.model.d_model=0", "model.d_model", "positive integer"),
    ("--config.model.num_layers=-2", "model.num_layers", "positive integer"),
    ("--config.batch_size=0", "batch_size", "positive integer"),
    ("--config.attention_impl=flash9000", "attention_impl", "allowed values: " + ", ".join(("auto", *kernels.available_impls()))),
    ("--config.model.dtype=float8", "model.dtype", "allowed values: bfloat16, float32"),
]


@pytest.mark.parametrize("override,field,allowed", BAD)
def test_bad_value_rejected_in_process(override, field, allowed):
    config = cpu_tiny.get_config()
    path, value = override.removeprefix("--config.").split("=")
    target = config
    *parents, leaf = path.split(".")
    for p in parents:
        target = target[p]
    target[leaf] = type(target[leaf])(value)
    with pytest.raises(validate.ConfigError) as err:
        validate.validate(config)
    assert err.value.field == field
    assert allowed in str(err.value) and repr(err.value.value) in str(err.value)


def _train_cli(*args, tmp_path):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args, f"--workdir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )


@pytest.mark.parametrize("override,field,allowed", BAD)
def test_bad_value_exits_nonzero_with_message(override, field, allowed, tmp_path):
    proc = _train_cli("--config=configs/cpu_tiny.py", override, tmp_path=tmp_path / "run")
    assert proc.returncode != 0
    assert f"config.{field}=" in proc.stderr and allowed in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "record.json").exists()


def test_unknown_ladder_name_exits_nonzero(tmp_path):
    proc = _train_cli("--config=configs/paper.py:999M", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "unknown ladder size '999M'" in proc.stderr and "150M" in proc.stderr


def test_profile_rejects_bad_config_too(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.profile", "--config=configs/cpu_tiny.py", "--config.model.num_kv_heads=3"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2 and "config.model.num_kv_heads=3" in proc.stderr and "Traceback" not in proc.stderr


def test_both_or_neither_step_budget_rejected():
    config = cpu_tiny.get_config()
    config.train_tokens = 1000
    with pytest.raises(validate.ConfigError, match="exactly one of train_steps and train_tokens"):
        validate.validate(config)


def test_validate_resolves_and_does_not_mutate():
    config = base.get_config()
    config.train_steps = None
    config.train_tokens = 10**9
    resolved = validate.validate(config)
    assert resolved.model.d_ff == 2048  # 8 * 768 / 3
    assert resolved.train_steps == math.ceil(10**9 / (64 * 8192))
    assert config.model.d_ff is None


@pytest.mark.parametrize("name", [n for n, s in PAPER_LADDER.items() if s.train_tokens])
def test_paper_ladder_configs(name):
    config = validate.validate(paper.get_config(name))
    shape = PAPER_LADDER[name]
    assert (config.model.num_layers, config.model.d_model) == (shape.num_layers, shape.d_model)
    assert config.model.num_q_heads == config.model.num_kv_heads == shape.d_model // 64
    assert config.batch_size * config.seq_len == 512 * 1024  # 512K tokens per batch
    assert config.train_steps * config.batch_size * config.seq_len >= shape.train_tokens
    assert config.optimizer.learning_rate == shape.max_lr
    arch = validate.architecture(config)
    assert arch == Architecture(shape.num_layers, shape.d_model, shape.d_model // 64, shape.d_model // 64, 64, 50304)
    assert param_counts(arch).non_embedding > 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config=configs/cpu_tiny.py", "--config.model.nope=3"], "unknown config field 'nope'"),
        (["--config=configs/missing.py"], "cannot load the file given by --config"),
        (["--config=configs/cpu_tiny.py", "--config.batch_size=abc"], "--config.batch_size=abc"),
    ],
)
def test_flag_errors_are_one_line(args, message, tmp_path):
    proc = _train_cli(*args, tmp_path=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
