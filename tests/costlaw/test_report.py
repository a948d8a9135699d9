"""The report: every section present with fitted numbers near the truth, figures real PNGs, HTML self-contained."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from costlaw.cli import main
from costlaw.laws import LossLaw
from costlaw.report import ReportOptions, build_report, context_gaps
from costlaw.records import load_records
from costlaw.synthetic import synthetic_records

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def _laws(rng):
    """Four head configurations; fewer KV heads cost a little loss (larger a)."""
    e, b = 1.8 + rng.uniform(-0.1, 0.1), 0.3 + rng.uniform(-0.02, 0.02)
    return {h: LossLaw(a=a, b=b, E=e) for h, a in {(8, 8): 1.0e8, (8, 2): 1.1e8, (8, 1): 1.2e8, (4, 4): 1.15e8}.items()}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng()
    laws = _laws(rng)
    folder = tmp_path_factory.mktemp("records")
    synthetic_records(laws, noise=0.002, seed=int(rng.integers(1 << 30)), out_dir=folder, extra_contexts=(2048, 32768))
    (folder / "broken.json").write_text("{ not json")
    out = tmp_path_factory.mktemp("report")
    with pytest.warns(UserWarning, match="broken.json"):
        loaded = load_records([folder])
    files = build_report(loaded, out, ReportOptions(contexts=(8192, 131072), bootstrap=40))
    return laws, folder, out, files


def test_sections_and_fitted_numbers(report):
    laws, _, _, files = report
    text = files.markdown.read_text()
    for heading in ("## Fitted laws", "## Optimal head configuration", "## Ranking at T = 131,072",
                    "## Loss-cost frontiers", "## Are relative loss gaps flat across contexts?"):
        assert heading in text
    assert "broken.json" in text  # the skipped file is named in the report, not silently dropped
    data = json.loads(files.json.read_text())
    for heads, law in laws.items():
        fit = data["fits"][str(heads)]
        # per-H fits on 8 ladder sizes with 0.2% noise: the loss they predict at 1B is within 1%
        predicted = (fit["a"] / 1e9) ** fit["b"] + fit["E"]
        assert predicted == pytest.approx(law.loss(1e9), rel=0.01)
        assert fit["intervals"]["E"][0] <= fit["intervals"]["E"][1]  # coverage: tests/costlaw/test_fit.py
    optimal = text.split("## Optimal head configuration")[1].split("## Ranking")[0]
    cells = [line for line in optimal.splitlines() if re.match(r"^\| [\d.]+ \| [\d,]+ \| \d+,\d+ ", line)]
    assert len(cells) == 3 * 2 and all(line.count("[") == 4 for line in cells)  # N*, FLOPs, memory, Z
    # every number of the ranking tables carries an interval: "value [lo, hi]"
    ranking = text.split("## Ranking")[1].split("## Loss-cost")[0]
    rows = [line for line in ranking.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert rows and all(line.count("[") >= 4 for line in rows)


def test_figures_are_pngs_and_html_embeds_them(report):
    _, _, out, files = report
    names = {p.name for p in files.figures}
    assert {"loss_vs_params.png", "frontier_flops_T8192.png", "frontier_memory_T131072.png"} <= names
    for path in files.figures:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    page = files.html.read_text()
    assert page.count("data:image/png;base64,") == len(files.figures)
    assert not re.search(r'src="(?!data:)', page)  # nothing loaded from outside the file
    assert "<table>" in page


def test_context_gaps_measure_relative_loss(report):
    _, folder, _, _ = report
    with pytest.warns(UserWarning, match="broken.json"):
        records = load_records([folder]).records
    gaps = context_gaps(records)
    # every configuration shares the ladder's (L, d); the reference is the widest MHA run, (8, 8)
    assert set(gaps) == {(8, 2), (8, 1), (8, 8), (4, 4)}
    for heads, per in gaps.items():
        assert sorted(per) == [2048, 8192, 32768]
    # recompute one gap by hand from the records
    by = {(r.heads, r.architecture.num_layers, r.architecture.d_model): r for r in records}
    hand = np.mean([by[((8, 1), l, d)].losses_by_context[8192] / by[((8, 8), l, d)].losses_by_context[8192] - 1
                    for (h, l, d) in by if h == (8, 1)])
    assert gaps[(8, 1)][8192] == pytest.approx(hand)
    assert gaps[(8, 8)][8192] == 0


def test_cli_report_and_recommend_from_records(report, tmp_path):
    _, folder, _, _ = report
    proc = subprocess.run(
        [sys.executable, "-m", "costlaw", "report", "--records", str(folder), "--out", str(tmp_path / "r"),
         "--bootstrap", "20", "--contexts", "8192", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "broken.json" in proc.stderr and "Traceback" not in proc.stderr
    written = json.loads(proc.stdout)
    # loss vs N, two frontiers at the one context, the savings at it
    assert Path(written["html"]).exists() and len(written["figures"]) == 4


def test_recommend_with_records_reports_intervals(report, capsys):
    laws, folder, _, _ = report
    assert main(["recommend", "--records", str(folder), "--bootstrap", "20", "--target-loss", "2.6",
                 "--context", "131072", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    best = out["ranked"][0]
    lo, hi = best["intervals"]["n_star"]
    assert 0 < lo <= hi
    # the true law of the winner needs about the same N* as the fitted one
    truth = laws[(best["n_q"], best["n_kv"])].n_for_loss(2.6)
    assert best["n_star"] == pytest.approx(truth, rel=0.1)


def test_report_rejects_records_without_heads(tmp_path, capsys):
    table = tmp_path / "runs.csv"
    table.write_text("N,loss\n1e6,4.0\n1e7,3.5\n1e8,3.0\n")
    assert main(["report", "--records", str(table), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "head configuration" in err and err.count("\n") == 1
