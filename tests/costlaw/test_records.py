"""Tests for costlaw.records: run records in the trainer's format, tables, skipped files, duplicates."""

import ast
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from costlaw.arch import param_counts
from costlaw.laws import LossLaw
from costlaw.records import RecordsError, RecordWarning, load_records
from costlaw.synthetic import PAPER_HEADS, synthetic_record, synthetic_records

REPO = Path(__file__).resolve().parents[2]


def _law(rng):
    return LossLaw(a=float(rng.uniform(5e7, 5e8)), b=float(rng.uniform(0.2, 0.4)), E=float(rng.uniform(1.5, 2.2)))


def _write(path: Path, record) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def _one_record(rng, **kwargs):
    return synthetic_record(_law(rng), "19M", (8, 2), rng=rng, **kwargs)


def test_synthetic_records_have_exactly_the_trainers_keys():
    # The record dict literal in experiments/train.py is the format's definition; read it without importing jax.
    tree = ast.parse((REPO / "experiments" / "train.py").read_text())
    trainer_keys = next(
        {k.value for k in node.value.keys}
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "record"
    )
    record = _one_record(np.random.default_rng())
    assert set(record) == trainer_keys
    assert {"step", "context", "loss", "tokens"} == set(record["eval_losses"][0])


def test_folder_is_searched_recursively_and_losses_come_from_the_last_eval(tmp_path):
    rng = np.random.default_rng()
    laws = {heads: _law(rng) for heads in [(1, 1), (8, 2), (32, 8)]}
    records = synthetic_records(laws, ["3M", "85M", (10, 640)], seed=int(rng.integers(1 << 30)),
                                extra_contexts=(2048, 32768))
    for i, record in enumerate(records):
        _write(tmp_path / "sweep" / f"group{i % 2}" / f"run{i}" / "record.json", record)
    loaded = load_records([tmp_path])
    assert loaded.warnings == [] and loaded.duplicates == []
    assert len(loaded.records) == 9
    by_source = {r.source: r for r in loaded.records}
    for i, record in enumerate(records):
        got = by_source[str(tmp_path / "sweep" / f"group{i % 2}" / f"run{i}" / "record.json")]
        final = [row for row in record["eval_losses"] if row["step"] == record["config"]["train_steps"]]
        assert got.loss == next(row["loss"] for row in final if row["context"] == 8192)
        assert got.loss < record["eval_losses"][0]["loss"]  # the midway evaluation is not used
        assert got.losses_by_context == {row["context"]: row["loss"] for row in final}
        assert set(got.losses_by_context) == {8192, 2048, 32768}
        assert got.heads == (record["architecture"]["num_q_heads"], record["architecture"]["num_kv_heads"])
        assert got.non_embedding == param_counts(got.architecture).non_embedding
        assert got.train_tokens == record["train_tokens"] and got.train_context == 8192


def test_csv_with_training_flops_derives_tokens(tmp_path):
    rng = np.random.default_rng()
    n = rng.uniform(1e7, 1e10, size=6)
    d = rng.uniform(1e9, 1e12, size=6)
    loss = rng.uniform(2.0, 4.0, size=6)
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "Model Size", "Training FLOP", "loss"])
        writer.writerows([[0, a, 6 * a * b, c] for a, b, c in zip(n, d, loss)])
    loaded = load_records([path])
    assert [r.source for r in loaded.records] == [f"{path}:{line}" for line in range(2, 8)]
    assert [r.heads for r in loaded.records] == [None] * 6  # no n_q/n_kv columns: no head configuration
    np.testing.assert_allclose([r.train_tokens for r in loaded.records], d, rtol=1e-9)
    np.testing.assert_allclose([r.non_embedding for r in loaded.records], np.round(n))
    assert [r.loss for r in loaded.records] == pytest.approx(loss.tolist(), rel=1e-15)


def test_jsonl_with_heads_and_context(tmp_path):
    rng = np.random.default_rng()
    rows = [{"N": int(rng.integers(1e6, 1e9)), "D": int(rng.integers(1e8, 1e11)), "n_q": q, "n_kv": k,
             "context": 8192, "loss": float(rng.uniform(2, 4))} for q, k in PAPER_HEADS[:5]]
    _write(tmp_path / "deep" / "t.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    loaded = load_records([tmp_path])
    assert [(r.heads, r.non_embedding, r.train_tokens, r.loss, r.losses_by_context) for r in loaded.records] == [
        ((r["n_q"], r["n_kv"]), r["N"], r["D"], r["loss"], {8192: r["loss"]}) for r in rows
    ]


def _without(record, key):
    return {k: v for k, v in record.items() if k != key}


BAD_RECORDS = {
    "corrupt.json": (lambda r: json.dumps(r)[:-7], "not valid JSON"),
    "wrong_kind.json": (lambda r: {**r, "kind": "tensorboard-summary"}, "not a run record"),
    "newer.json": (lambda r: {**r, "schema_version": 2}, "schema_version 2 is not supported"),
    "no_eval.json": (lambda r: _without(r, "eval_losses"), "missing eval_losses"),
    "no_params.json": (lambda r: _without(r, "params"), "missing params"),
    "negative.json": (lambda r: {**r, "eval_losses": [{**e, "loss": -abs(e["loss"])} for e in r["eval_losses"]]},
                      "positive finite loss"),
    "nan.json": (lambda r: {**r, "eval_losses": [{**e, "loss": float("nan")} for e in r["eval_losses"]]},
                 "positive finite loss"),
    "unfinished.json": (lambda r: {**r, "eval_losses": r["eval_losses"][:1]}, "incomplete record: last evaluation"),
    "bad_heads.json": (lambda r: {**r, "architecture": {**r["architecture"], "num_kv_heads": 3}},
                       "num_kv_heads=3 does not divide"),
    "no_train_context_eval.json": (lambda r: {**r, "train_context": 4096}, "no eval loss at the training context 4096"),
}


def test_each_bad_record_is_skipped_with_one_warning_naming_file_and_reason(tmp_path):
    rng = np.random.default_rng()
    for name, (corrupt, _) in BAD_RECORDS.items():
        _write(tmp_path / "runs" / name, corrupt(_one_record(rng)))
    good = _write(tmp_path / "runs" / "good" / "record.json", _one_record(rng))
    _write(tmp_path / "bad_rows.csv", "N,loss,n_q,n_kv\n1000000,3.1,8,2\n2000000,-1,8,2\n3000000,2.9,8,3\n4e6,x,4,4\n")
    with pytest.warns(RecordWarning) as caught:
        loaded = load_records([tmp_path])
    assert len(loaded.warnings) == len(BAD_RECORDS) + 3
    assert [str(w.message) for w in caught] == loaded.warnings
    for name, (_, reason) in BAD_RECORDS.items():
        mine = [w for w in loaded.warnings if f"{tmp_path / 'runs' / name}:" in w]
        assert len(mine) == 1 and reason in mine[0], (name, mine)
    rows = sorted(w for w in loaded.warnings if "bad_rows.csv" in w)
    assert [w.split("bad_rows.csv:")[1][:1] for w in rows] == ["3", "4", "5"]
    assert "does not divide" in rows[1] and "loss 'x' is not a positive finite number" in rows[2]
    assert sorted(r.source for r in loaded.records) == sorted([str(good), f"{tmp_path / 'bad_rows.csv'}:2"])


def test_table_without_a_loss_column_is_one_warning(tmp_path):
    path = _write(tmp_path / "t.csv", "N,D\n1,2\n3,4\n")
    _write(tmp_path / "ok" / "record.json", _one_record(np.random.default_rng()))
    with pytest.warns(RecordWarning):
        loaded = load_records([tmp_path])
    assert len(loaded.warnings) == 1 and str(path) in loaded.warnings[0] and "'loss' column" in loaded.warnings[0]
    assert len(loaded.records) == 1


def test_duplicates_keep_the_first_and_report_the_pair(tmp_path):
    rng = np.random.default_rng()
    first = _write(tmp_path / "a" / "record.json", _one_record(rng, seed=0))
    other_seed = _write(tmp_path / "b" / "record.json", _one_record(rng, seed=1))
    copy = tmp_path / "c" / "record.json"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    loaded = load_records([tmp_path, first])  # the file named twice is read once
    assert loaded.duplicates == [(str(first), str(copy))]
    assert [r.source for r in loaded.records] == [str(first), str(other_seed)]


def test_missing_path_and_empty_folder_raise(tmp_path):
    with pytest.raises(RecordsError, match="does-not-exist does not exist"):
        load_records([tmp_path / "does-not-exist"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("nothing")
    with pytest.raises(RecordsError, match=r"no run records \(\*\.json\) or loss tables"):
        load_records([tmp_path / "empty"])
