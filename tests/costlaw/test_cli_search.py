"""Tests for `costlaw recommend` and `costlaw frontier`: JSON values, the summary sentence and one-line errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from costlaw.cli import main
from costlaw.laws import LossLaw, laws_to_json
from costlaw.search import best_under_budget, candidate_heads, recommend

REPO = Path(__file__).resolve().parents[2]
LAWS = {h: LossLaw(a=1e8 * (1 + 0.03 * math.log2(32 / h[0]) + 0.04 * math.log2(32 / h[1])), b=0.3, E=1.8)
        for h in candidate_heads(32)}


@pytest.fixture
def fits(tmp_path):
    path = tmp_path / "fits.json"
    path.write_text(json.dumps({"laws": laws_to_json(LAWS), "note": "as written by costlaw fit --json"}))
    return path


def run_json(capsys, argv):
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return json.loads(captured.out)


def test_recommend_json_matches_the_library(capsys, fits):
    out = run_json(capsys, ["recommend", "--fits", str(fits), "--target-loss", "2.6", "--context", "131072",
                            "--json"])
    rec = recommend(LAWS, 2.6, 131072)
    assert out["winner"] == list(rec.winner.heads) and out["runner_up"] == list(rec.runner_up.heads)
    assert out["baseline"] == list(rec.baseline.heads) and out["baseline"][1] == 8
    assert [[r["n_q"], r["n_kv"]] for r in out["ranked"]] == [list(c.heads) for c in rec.ranked]
    assert out["ranked"][0]["z"] == rec.winner.z and out["ranked"][0]["n_star"] == rec.winner.n_star
    assert out["saving"]["memory"] == pytest.approx(rec.saving("memory"), rel=1e-12) and out["saving"]["memory"] > 0.3


def test_recommend_options_reach_the_library(capsys, tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(laws_to_json(LAWS)))  # a bare list of rows works too
    out = run_json(capsys, ["recommend", "--fits", str(path), "--target-loss", "2.8", "--context", "4096",
                            "--rank-by", "flops", "--baseline", "16,4", "--lam", "0.5", "--kv-dtype", "fp8",
                            "--json"])
    assert out["baseline"] == [16, 4] and out["rank_by"] == "flops" and out["objective"]["lam"] == 0.5
    flops = [r["flops"] for r in out["ranked"]]
    assert flops == sorted(flops)


def test_recommend_text_names_winner_runner_up_and_saving(capsys, fits):
    assert main(["recommend", "--fits", str(fits), "--target-loss", "2.6", "--context", "131072"]) == 0
    text = capsys.readouterr().out
    rec = recommend(LAWS, 2.6, 131072)
    summary = text.strip().splitlines()[-1]
    assert summary.startswith(f"Best ({rec.winner.heads[0]},{rec.winner.heads[1]})")
    assert f"runner-up ({rec.runner_up.heads[0]},{rec.runner_up.heads[1]})" in summary
    assert f"{100 * rec.saving('memory'):.1f}% less memory" in summary
    assert len(text.splitlines()) == 2 + len(LAWS) + 1


def test_recommend_under_a_budget(capsys, tmp_path):
    laws = {h: LAWS[h] for h in [(32, 8), (8, 1), (1, 1)]}
    path = tmp_path / "few.json"
    path.write_text(json.dumps({"laws": laws_to_json(laws)}))
    out = run_json(capsys, ["recommend", "--fits", str(path), "--memory-budget", "4e9", "--context", "131072",
                            "--json"])
    result = best_under_budget(laws, 131072, memory_budget=4e9)
    assert [[r["n_q"], r["n_kv"]] for r in out["ranked"]] == [list(c.heads) for c in result.ranked]
    assert all(r["memory_bytes"] <= 4e9 for r in out["ranked"])


def test_frontier_json(capsys, fits):
    out = run_json(capsys, ["frontier", "--fits", str(fits), "--context", "8192,131072", "--target-losses",
                            "2.6,1.5", "--points", "8", "--json"])
    assert [f["context"] for f in out["frontiers"]] == [8192, 131072]
    assert all(f["flops"] and f["memory"] for f in out["frontiers"])
    table = out["table"]
    assert [(r["target_loss"], r["context"]) for r in table] == [(2.6, 8192), (2.6, 131072), (1.5, 8192),
                                                                 (1.5, 131072)]
    assert table[1]["recommendation"]["winner"] == list(recommend(LAWS, 2.6, 131072).winner.heads)
    assert table[2]["recommendation"] is None


def test_frontier_text(capsys, fits):
    assert main(["frontier", "--fits", str(fits), "--context", "8192", "--target-losses", "2.6", "--points", "5"]) == 0
    text = capsys.readouterr().out
    assert "Pareto set at T = 8,192: loss vs FLOPs/token" in text and "| 2.6 | 8,192 |" in text


def test_recommend_as_a_subprocess(fits):
    result = subprocess.run(
        [sys.executable, "-m", "costlaw", "recommend", "--fits", str(fits), "--target-loss", "3.0",
         "--context", "131072", "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["winner"] == list(recommend(LAWS, 3.0, 131072).winner.heads)


@pytest.mark.parametrize("args, message", [
    (["--fits", "{missing}"], "cannot read --fits"),
    (["--fits", "{bad_json}"], "is not valid JSON"),
    (["--fits", "{no_laws}"], "holds no laws"),
    (["--fits", "{bad_row}"], "law row 0"),
    (["--target-loss", "1.5"], "smallest reachable loss is just above 1.8"),
    (["--target-loss", "abc"], "--target-loss: 'abc' is not a positive number"),
    (["--context", "-4"], "--context: '-4' is not a positive number"),
    (["--baseline", "64,8"], "baseline (64, 8) has no loss law"),
    (["--baseline", "8"], "is not a head configuration"),
    (["--memory-budget", "1e9"], "give --target-loss, or a budget"),
    (["--lam", "2"], "--lam=2"),
])
def test_errors_are_one_line(capsys, fits, tmp_path, args, message):
    paths = {"missing": tmp_path / "nope.json", "bad_json": tmp_path / "bad.json",
             "no_laws": tmp_path / "empty.json", "bad_row": tmp_path / "row.json"}
    paths["bad_json"].write_text("{not json")
    paths["no_laws"].write_text(json.dumps({"laws": []}))
    paths["bad_row"].write_text(json.dumps([{"n_q": 8, "n_kv": 3, "a": 1, "b": 1, "E": 1}]))
    argv = {"--fits": str(fits), "--target-loss": "2.6", "--context": "8192"}
    for flag, value in zip(args[::2], args[1::2]):
        argv[flag] = value.format(**paths)
    assert main(["recommend", *[x for pair in argv.items() for x in pair]]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("costlaw: error: ")
    assert message in captured.err and "Traceback" not in captured.err


def test_frontier_error_is_one_line(capsys, fits):
    assert main(["frontier", "--fits", str(fits), "--context", "8192", "--n-min", "1e9", "--n-max", "1e8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--n-min" in err


@pytest.mark.parametrize("row", [
    {"n_q": 8, "n_kv": 0, "a": 1e8, "b": 0.3, "E": 2.0},
    {"n_q": 8, "n_kv": 2, "a": 1e8, "b": 0.3, "E": float("nan")},
    {"n_q": -8, "n_kv": 2, "a": 1e8, "b": 0.3, "E": 2.0},
])
def test_malformed_law_rows_are_one_line_errors(tmp_path, capsys, row):
    path = tmp_path / "fits.json"
    path.write_text(json.dumps({"laws": [row]}))
    assert main(["recommend", "--fits", str(path), "--target-loss", "2.5", "--context", "8192"]) == 2
    err = capsys.readouterr().err
    assert "not a valid law" in err and err.count("\n") == 1
