"""Tests for costlaw.fit and `costlaw fit`: recovery of known laws, bootstrap intervals, held-out checks, joint model."""

import json

import numpy as np
import pytest

from costlaw.cli import main
from costlaw.fit import fit_heads, fit_joint, fit_loss_law
from costlaw.laws import LossLaw, laws_from_json, laws_to_json
from costlaw.records import load_records
from costlaw.synthetic import PAPER_HEADS, smooth_laws, synthetic_records

SIZES = np.geomspace(3e6, 3e9, 12)


def _random_law(rng, E=None):
    # b and the reducible loss at 1e8 span the range scaling studies report; a follows from them.
    b = rng.uniform(0.2, 0.45)
    excess = rng.uniform(0.8, 1.6)
    return LossLaw(a=1e8 * excess ** (1 / b), b=b, E=rng.uniform(1.5, 2.2) if E is None else E)


def _points(law, rng, noise, repeats=2):
    n = np.repeat(SIZES, repeats)
    return n, np.array([law.loss(x) for x in n]) * np.exp(noise * rng.standard_normal(len(n)))


def test_noise_free_points_give_the_law_back():
    rng = np.random.default_rng()
    law = _random_law(rng)
    fitted = fit_loss_law(*_points(law, rng, noise=0.0, repeats=1))
    assert fitted.b == pytest.approx(law.b, rel=1e-4)
    assert fitted.E == pytest.approx(law.E, rel=1e-4)
    assert fitted.a == pytest.approx(law.a, rel=1e-3)  # a = N_ref * exp(c/b) amplifies b's error


def test_recovers_known_laws_within_bootstrap_intervals():
    rng = np.random.default_rng()
    truth = {heads: _random_law(rng) for heads in [(1, 1), (8, 2), (32, 8)]}
    points = {heads: _points(law, rng, noise=0.003) for heads, law in truth.items()}
    result = fit_heads(points, bootstrap=40, seed=int(rng.integers(1 << 30)))
    for heads, law in truth.items():
        fit = result.fits[heads]
        assert fit.r2 > 0.99 and fit.n_points == 24 and len(fit.samples) == 40
        for name in ("a", "b", "E"):
            lo, hi = fit.intervals[name]
            value = getattr(fit.law, name)
            # a percentile interval need not contain the point estimate: check it is ordered and near
            assert lo <= hi and lo - (hi - lo) <= value <= hi + (hi - lo)
            # A 95% percentile interval from 40 resamples is itself noisy, and Huber fits (mostly in the
            # absolute-error regime) undercover a little: a margin of one width either side makes the test
            # check that the truth is where the interval says, not 5% bad luck per parameter.
            margin = hi - lo
            assert lo - margin <= getattr(law, name) <= hi + margin, (heads, name, getattr(law, name), lo, hi)
        assert fit.law.E == pytest.approx(law.E, rel=0.05)
        assert fit.law.b == pytest.approx(law.b, rel=0.15)
        point, lo, hi = fit.predict_interval(1e10)  # extrapolated: beyond the largest size
        assert lo < hi and lo * 0.99 < point < hi * 1.01  # percentile bounds need not bracket the estimate
        assert lo * 0.99 < law.loss(1e10) < hi * 1.01
        assert max(abs(r) for r in fit.residuals) < 0.02
    assert laws_from_json(json.loads(json.dumps(laws_to_json(result.laws)))) == result.laws


def test_shared_E_recovers_the_common_E_more_tightly():
    rng = np.random.default_rng()
    E = float(rng.uniform(1.6, 2.0))
    truth = {heads: _random_law(rng, E=E) for heads in [(2, 1), (4, 4), (16, 2), (32, 32)]}
    points = {heads: _points(law, rng, noise=0.005) for heads, law in truth.items()}
    seed = int(rng.integers(1 << 30))
    shared = fit_heads(points, shared_E=True, bootstrap=30, seed=seed)
    separate = fit_heads(points, bootstrap=30, seed=seed)
    Es = {fit.law.E for fit in shared.fits.values()}
    assert len(Es) == 1
    assert Es.pop() == pytest.approx(E, rel=0.03)
    intervals = {fit.intervals["E"] for fit in shared.fits.values()}
    assert len(intervals) == 1
    lo, hi = intervals.pop()
    assert lo - (hi - lo) <= E <= hi + (hi - lo)  # margin as in the test above
    mean_separate_width = np.mean([f.intervals["E"][1] - f.intervals["E"][0] for f in separate.fits.values()])
    assert hi - lo < mean_separate_width
    for heads, law in truth.items():
        assert shared.fits[heads].law.b == pytest.approx(law.b, rel=0.1)


def test_held_out_largest_size_is_predicted_and_needs_four_sizes():
    rng = np.random.default_rng()
    law = _random_law(rng)
    n, loss = _points(law, rng, noise=0.002)
    result = fit_heads({(4, 1): (n, loss), (4, 4): (SIZES[:3], [law.loss(x) for x in SIZES[:3]])}, bootstrap=0)
    held = result.fits[(4, 1)].held_out
    assert held.n == SIZES[-1]
    assert held.observed == pytest.approx(loss[-2:].mean())
    assert abs(held.relative_error) < 0.01
    assert result.fits[(4, 4)].held_out is None  # three sizes: nothing left to fit without the largest
    assert result.fits[(4, 4)].samples == () and result.fits[(4, 4)].intervals == {}
    with pytest.raises(ValueError, match="bootstrap > 0"):
        result.predict_interval((4, 4), 1e9)


def test_held_out_catches_a_curve_that_bends_away_at_the_largest_size():
    rng = np.random.default_rng()
    law = _random_law(rng)
    n, loss = _points(law, rng, noise=0.001)
    loss[n == n.max()] *= 1.05  # e.g. the largest run diverged: 5% above the law
    held = fit_heads({(8, 8): (n, loss)}, bootstrap=0).fits[(8, 8)].held_out
    assert held.relative_error < -0.035


def test_joint_model_predicts_an_untrained_head_configuration(tmp_path):
    rng = np.random.default_rng()
    truth = smooth_laws(E=float(rng.uniform(1.6, 2.0)), q_slope=float(rng.uniform(-0.06, -0.02)),
                        kv_slope=float(rng.uniform(-0.05, -0.01)))
    untrained = (16, 4)
    trained = {h: law for h, law in truth.items() if h != untrained}
    records = [r for r in load_records(synthetic_records(
        trained, noise=0.003, seed=int(rng.integers(1 << 30)), out_dir=tmp_path)).records]
    joint = fit_joint(records)
    assert joint.E == pytest.approx(truth[untrained].E, rel=0.03)
    assert joint.r2 > 0.999 and joint.n_points == 8 * 20
    assert set(joint.held_out) == set(trained)
    assert max(joint.held_out.values()) < 0.01
    predicted = joint.predict_law(*untrained)
    for n in (1e7, 1e8, 1e9, 1e10):
        assert predicted.loss(n) == pytest.approx(truth[untrained].loss(n), rel=0.01)
    # A wrong guess (the law of a far configuration) is far outside that accuracy.
    assert abs(truth[(1, 1)].loss(1e9) / truth[untrained].loss(1e9) - 1) > 0.03


def test_joint_held_out_flags_a_configuration_off_the_smooth_trend():
    rng = np.random.default_rng()
    truth = smooth_laws(PAPER_HEADS[:10])
    odd = (4, 2)
    law = truth[odd]
    truth[odd] = LossLaw(a=law.a, b=law.b, E=law.E * 1.04)  # 4% worse than its neighbours predict
    points = {h: _points(l, rng, noise=0.002, repeats=1) for h, l in truth.items()}
    joint = fit_joint(points)
    worst = max(joint.held_out, key=joint.held_out.get)
    assert worst == odd and joint.held_out[odd] > 0.02


def test_joint_model_needs_enough_head_configurations():
    rng = np.random.default_rng()
    points = {h: _points(_random_law(rng), rng, noise=0.0, repeats=1) for h in [(1, 1), (2, 2), (4, 4)]}
    with pytest.raises(ValueError, match="not collinear"):
        fit_joint(points)


def test_cli_fit_skips_a_corrupt_record_and_prints_json_laws(tmp_path, capsys):
    rng = np.random.default_rng()
    truth = smooth_laws(PAPER_HEADS[:6])
    synthetic_records(truth, seed=int(rng.integers(1 << 30)), out_dir=tmp_path)
    (tmp_path / "broken" / "record.json").parent.mkdir()
    (tmp_path / "broken" / "record.json").write_text('{"kind": "gqa-costlaw-run", ')
    assert main(["fit", "--records", str(tmp_path), "--bootstrap", "20", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        next(line for line in captured.err.splitlines() if "broken" in line)
    ]
    assert captured.err.startswith(f"costlaw: warning: skipped {tmp_path / 'broken' / 'record.json'}: not valid JSON")
    report = json.loads(captured.out)
    laws = laws_from_json(report["laws"])
    assert set(laws) == set(truth)
    for heads, law in laws.items():
        assert law.loss(5e8) == pytest.approx(truth[heads].loss(5e8), rel=0.01)
    assert len(report["warnings"]) == 1 and report["n_records"] == 6 * 8
    # intervals are present and ordered; whether they cover the truth is the recovery tests' job (20
    # resamples here: a percentile interval need not even contain the point estimate)
    assert all(f["held_out"] is not None and f["intervals"]["E"][0] <= f["intervals"]["E"][1] for f in report["fits"])
    # Without (2, 2) the other five have log2 n_q * log2 n_kv = 2 log2 n_kv: the interaction is
    # undetermined, so that configuration gets no leave-one-out error.
    left_out = {(row["n_q"], row["n_kv"]) for row in report["joint"]["held_out"]}
    assert left_out == set(truth) - {(2, 2)}

    assert main(["fit", "--records", str(tmp_path), "--bootstrap", "0"]) == 0
    text = capsys.readouterr().out
    assert "(32, 1)" not in text and "(4, 2)" in text and "joint model over heads" in text


def test_cli_fit_errors_are_one_line(tmp_path, capsys):
    assert main(["fit", "--records", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("costlaw: error: ") and "nowhere does not exist" in err
    (tmp_path / "only_bad.json").write_text("[]")
    assert main(["fit", "--records", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("costlaw: warning: skipped") and err[1].startswith("costlaw: error: every record")
