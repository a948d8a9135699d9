"""The profiler: the compiler's own matmul count agrees with the analytic cost model."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cpu_tiny, paper
from experiments import hlo, profile, validate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_dot_flops_hand_counted():
    """2*M*N*K for a plain matmul and a batched one, read back from compiled HLO."""
    rng = np.random.default_rng()
    m, k, n, b = (int(x) for x in rng.integers(3, 40, 4))
    f = jax.jit(lambda x, y, u, w: (x @ y, jnp.einsum("bmk,bkn->bmn", u, w)))
    args = (jnp.ones((m, k)), jnp.ones((k, n)), jnp.ones((b, m, k)), jnp.ones((b, k, n)))
    text = f.lower(*args).compile().as_text()
    assert hlo.dot_flops(text) == 2 * m * n * k + 2 * b * m * n * k


def _tiny(**overrides):
    config = cpu_tiny.get_config()
    config.attention_impl = "xla"  # dense: every attention matmul is a dot the compiler counts
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return validate.validate(config)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"model.num_kv_heads": 1, "model.tie_embeddings": False},
        {"model.num_q_heads": 8, "model.head_dim": 16, "model.dtype": "bfloat16"},
    ],
)
@pytest.mark.parametrize("context", [37, 256])
def test_compiler_dots_equal_analytic(overrides, context):
    config = _tiny(**overrides)
    for result in (profile.profile_forward(config, context, 2), profile.profile_train_step(config, context, 2)):
        assert result.dot_ratio == pytest.approx(1.0, abs=1e-9), result
        # elementwise work is real but small: the total exceeds the matmul count by a few percent
        assert 1.0 < result.total_ratio < 1.25
        assert result.analytic_causal_flops < result.analytic_dense_flops
    fwd = profile.profile_forward(config, context, 1)
    assert fwd.argument_bytes >= fwd.analytic_state_bytes  # parameters (+ token ids) are the arguments


@pytest.mark.slow
@pytest.mark.parametrize("name", ["3M", "19M", "85M", "150M", "200M", "470M"])
def test_paper_ladder_matmul_count_within_2_percent(name):
    """Paper-scale shapes compile on abstract inputs (nothing allocated). The issue asks for 2%;
    the counts agree exactly because both sides count the same dots."""
    config = paper.get_config(name)
    config.attention_impl = "xla"
    config = validate.validate(config)
    for result in (profile.profile_forward(config, 1024), profile.profile_train_step(config, 1024)):
        assert abs(result.dot_ratio - 1) < 0.02, result
        n_params = result.analytic_state_bytes / (4 if result.pass_name == "forward" else 12)
        assert result.argument_bytes >= result.analytic_state_bytes and n_params > 1e6


def test_cli_json_and_table():
    cmd = [sys.executable, "-m", "experiments.profile", "--config=configs/cpu_tiny.py", "--context_lengths=64,96", "--train_step=false"]
    proc = subprocess.run(cmd + ["--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["pass_name"], r["context"]) for r in rows] == [("forward", 64), ("forward", 96)]
    assert all(r["dot_ratio"] == pytest.approx(1.0) and r["attention_impl"] == "xla" for r in rows)
    table = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert table.returncode == 0 and "dots/analytic" in table.stdout and "1.0000" in table.stdout


def test_cli_rejects_bad_context_lengths():
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.profile", "--config=configs/cpu_tiny.py", "--context_lengths=64,-3"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2 and "context_lengths" in proc.stderr and "Traceback" not in proc.stderr
