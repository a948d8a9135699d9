"""Tests for the `costlaw cost` command line: hand-computed numbers, human output and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from costlaw.cli import main

REPO = Path(__file__).resolve().parents[2]

LLAMA_ARGS = ["cost", "--layers", "36", "--d-model", "1536", "--q-heads", "32", "--kv-heads", "8",
              "--head-dim", "64", "--vocab", "50304", "--context", "131072", "--json"]


def run_json(capsys, argv):
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return json.loads(captured.out)


def test_llama_heads_at_128k_match_hand_arithmetic(capsys):
    report = run_json(capsys, LLAMA_ARGS + ["--train-tokens", "24000000000"])
    # d_ff = 8*1536/3 = 4096 exactly; attention per layer d*d_h*(2 n_q + 2 n_kv); 3 SwiGLU matrices; tied V*d once.
    n_matmul = 36 * (1536 * 64 * (2 * 32 + 2 * 8) + 3 * 1536 * 4096) + 50304 * 1536
    assert n_matmul == 1_039_859_712
    n_total = n_matmul + (2 * 36 + 1) * 1536
    kv_values = 2 * 131072 * 36 * 64 * 8
    entry = report["inference"][0]
    assert entry["flops"] == {
        "time_invariant": 2 * n_matmul,
        "context": 4 * 131072 * 36 * 64 * 32,
        "total": 2 * n_matmul + 4 * 131072 * 36 * 64 * 32,
    }
    assert entry["memory_values"] == {"weights": n_total, "kv_cache": kv_values, "total": n_total + kv_values}
    assert entry["memory_bytes"]["total"] == 2 * (n_total + kv_values)
    gb, gflop = 2 * (n_total + kv_values) / 1e9, (2 * n_matmul + 4 * 131072 * 36 * 64 * 32) / 1e9
    assert entry["objective"]["z"] == pytest.approx(0.9 * gb**0.5 + 0.1 * gflop ** (1 / 3), rel=1e-12)
    per_token = 6 * n_matmul + 12 * 36 * 64 * 32 * (8192 // 2)
    assert report["training"]["flops_per_token"]["total"] == per_token
    assert report["training"]["flops_per_run"]["total"] == 24_000_000_000 * per_token
    assert report["params"]["non_embedding"] == n_total - 50304 * 1536


def test_small_untied_gqa_config_matches_hand_arithmetic(capsys):
    report = run_json(capsys, [
        "cost", "--layers", "2", "--d-model", "128", "--q-heads", "4", "--kv-heads", "2", "--head-dim", "32",
        "--vocab", "1000", "--untied", "--context", "100,300", "--train-context", "512",
        "--param-dtype", "float32", "--kv-dtype", "fp8", "--memory-unit", "bytes", "--flops-unit", "FLOP",
        "--lam", "0.5", "--json",
    ])
    # d_ff = 8*128/3 = 341.3 -> 352; untied: the lm_head [128, 1000] is the one matmul V*d, the table is a lookup.
    assert report["architecture"]["d_ff"] == 352
    n_matmul = 2 * (128 * 32 * (2 * 4 + 2 * 2) + 3 * 128 * 352) + 1000 * 128
    assert n_matmul == 496_640
    n_total = n_matmul + 1000 * 128 + (2 * 2 + 1) * 128
    assert report["params"]["total"] == n_total == 625_280
    for entry, t in zip(report["inference"], (100, 300)):
        flops = 2 * n_matmul + 4 * t * 2 * 32 * 4
        nbytes = 4 * n_total + 1 * (2 * t * 2 * 32 * 2)
        assert entry["context"] == t
        assert entry["flops"]["total"] == flops
        assert entry["memory_bytes"]["total"] == nbytes
        assert entry["objective"]["z"] == pytest.approx(0.5 * nbytes**0.5 + 0.5 * flops ** (1 / 3), rel=1e-12)
    assert report["training"]["flops_per_token"]["total"] == 6 * n_matmul + 12 * 2 * 32 * 4 * 256
    # float32 params: no separate master copy.
    assert report["training"]["memory_bytes"]["master_weights"] == 0


def test_ladder_shape_with_gqa_heads(capsys):
    report = run_json(capsys, ["cost", "--ladder", "85M", "--kv-heads", "3", "--context", "8192", "--json"])
    arch = report["architecture"]
    assert (arch["num_layers"], arch["d_model"], arch["num_q_heads"], arch["num_kv_heads"]) == (12, 768, 12, 3)


def test_table_output_uses_human_units(capsys):
    assert main([a for a in LLAMA_ARGS if a != "--json"]) == 0
    out = capsys.readouterr().out
    assert "40.73 GFLOP" in out  # 2N + 4TLd_h n_q at 128K
    assert "11.74 GB" in out  # bf16 weights + KV cache
    assert "1,039,859,712" in out


def test_subprocess_entry_point_prints_json():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "costlaw", *LLAMA_ARGS], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["inference"][0]["flops"]["total"] == 40_734_425_088


USER_ERRORS = [
    pytest.param(["cost", "--ladder", "5M", "--context", "10"], "unknown ladder name", id="unknown-ladder"),
    pytest.param(["cost", "--layers", "4", "--d-model", "512", "--q-heads", "8", "--kv-heads", "3", "--context", "10"],
                 "--kv-heads=3 does not divide --q-heads=8", id="heads-indivisible"),
    pytest.param(["cost", "--layers", "four", "--d-model", "512", "--context", "10"], "--layers", id="bad-int"),
    pytest.param(["cost", "--ladder", "3M", "--context", "8192,-1"], "--context", id="negative-context"),
    pytest.param(["cost", "--ladder", "3M"], "--context", id="missing-context"),
    pytest.param(["cost", "--context", "10"], "--ladder NAME, or both --layers and --d-model", id="no-shape"),
    pytest.param(["cost", "--ladder", "3M", "--layers", "4", "--context", "10"], "not both", id="two-shapes"),
    pytest.param(["cost", "--ladder", "3M", "--context", "10", "--lam", "1.5"], "--lam", id="bad-lam"),
    pytest.param(["cost", "--ladder", "3M", "--context", "10", "--memory-unit", "MB"], "--memory-unit",
                 id="bad-unit"),
    pytest.param(["cost", "--ladder", "3M", "--context", "10", "--kv-dtype", "int4"], "--kv-dtype", id="bad-dtype"),
    pytest.param(["cost", "--layers", "2", "--d-model", "100", "--context", "10"], "pass --q-heads",
                 id="no-default-heads"),
    pytest.param(["cost", "--ladder", "3M", "--context", "10", "--ffn-matrices", "4"], "--ffn-matrices",
                 id="bad-ffn-matrices"),
    pytest.param([], "COMMAND", id="no-command"),
]


@pytest.mark.parametrize("argv, needle", USER_ERRORS)
def test_user_errors_exit_2_with_one_line(capsys, argv, needle):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("costlaw: error: ")
    assert needle in lines[0]


def test_user_error_in_a_subprocess_has_no_traceback():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "costlaw", "cost", "--layers", "4", "--d-model", "512", "--q-heads", "8",
         "--kv-heads", "3", "--context", "10"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("costlaw: error: ")
