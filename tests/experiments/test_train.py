"""Training end to end: learning, resume after SIGKILL bit for bit, SIGTERM, two processes, TensorBoard, guards."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import cpu_tiny
from costlaw.arch import param_counts
from experiments import train, validate

REPO = Path(__file__).resolve().parents[2]
# small and quick, but every feature on: several evaluation contexts, checkpoints, all steps logged
TINY = ["--config=configs/cpu_tiny.py", "--config.batch_size=8", "--config.seq_len=64", "--config.log_every=1",
        "--config.eval_batches=1"]


def _run(workdir, *overrides, env=None, wait=True):
    cmd = [sys.executable, "-m", "experiments.train", *TINY, *overrides, f"--workdir={workdir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env or os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _record(workdir):
    return json.loads((Path(workdir) / "record.json").read_text())


@pytest.mark.slow
def test_short_run_learns_and_writes_record(tmp_path):
    config = cpu_tiny.get_config()
    config.train_steps, config.log_every, config.eval_every = 60, 20, 30
    lines = []
    result = train.train(config, tmp_path, echo=lines.append)
    losses = [loss for _, loss in result.losses]
    # a byte model starts near ln(256) nats and must beat it clearly within 60 steps
    assert losses[0] == pytest.approx(math.log(256), abs=0.5)
    assert losses[-1] < losses[0] - 2
    assert sorted({e["step"] for e in result.eval_losses}) == [30, 60]
    assert sorted({e["context"] for e in result.eval_losses}) == [32, 64, 128]  # T/4, T/2, T
    assert all(e["tokens"] > 0 for e in result.eval_losses)
    final = {e["context"]: e["loss"] for e in result.eval_losses if e["step"] == 60}
    assert final[128] < math.log(256) - 2
    record = json.loads(result.record_path.read_text())
    assert record["params"]["total"] == param_counts(validate.architecture(validate.validate(config))).total
    assert record["losses"] == [list(x) for x in result.losses]
    assert any("tok/s" in line and "eta" in line for line in lines)
    # TensorBoard: the event file holds the same numbers
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "perf/tokens_per_s", "eval/loss_T128"} <= set(tags)
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train/loss")] == [(s, round(v, 4)) for s, v in result.losses]
    assert events.Scalars("eval/loss_T128")[-1].value == pytest.approx(final[128], rel=1e-6)


@pytest.mark.slow
def test_sigkill_then_rerun_continues_bit_for_bit(tmp_path):
    steps = ["--config.train_steps=300", "--config.checkpoint_every=20", "--config.eval_every=100"]
    code, _, err = _run(tmp_path / "whole", *steps)
    assert code == 0, err[-2000:]
    proc = _run(tmp_path / "killed", *steps, wait=False)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoints" / "40").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (tmp_path / "killed" / "record.json").exists()
    code, out, err = _run(tmp_path / "killed", *steps)  # the same command again
    assert code == 0, err[-2000:]
    assert "resumed from the checkpoint after step" in out
    whole, resumed = _record(tmp_path / "whole"), _record(tmp_path / "killed")
    assert resumed["losses"] == whole["losses"]  # every logged step, exactly
    assert resumed["eval_losses"] == whole["eval_losses"]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    steps = ["--config.train_steps=400", "--config.checkpoint_every=1000", "--config.eval_every=1000"]
    proc = _run(tmp_path, *steps, wait=False)
    deadline = time.time() + 300
    line = ""
    while "step     20/" not in line:  # training is under way
        line = proc.stdout.readline()
        assert line and time.time() < deadline
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM: saved a checkpoint after step" in out
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 20 <= saved[0] < 400
    assert not (tmp_path / "record.json").exists()
    code, out, err = _run(tmp_path, *steps)
    assert code == 0 and f"resumed from the checkpoint after step {saved[0]}" in out, err[-2000:]
    assert _record(tmp_path)["losses"][-1][0] == 400


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """One job as two processes on 127.0.0.1 with 4 simulated devices each: the same loss curve
    (to float tolerance: reductions are split differently) as one process with one device."""
    steps = ["--config.train_steps=12", "--config.eval_every=12", "--config.checkpoint_every=6"]
    code, _, err = _run(tmp_path / "single", *steps)
    assert code == 0, err[-2000:]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        _run(tmp_path / "multi", *steps, f"--coordinator={address}", "--num_processes=2", f"--process_id={i}", env=env, wait=False)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "over 8 devices in 2 process(es)" in outputs[0][0]
    assert "step " not in outputs[1][0] and "wrote" not in outputs[1][0]  # only process 0 reports
    single, multi = _record(tmp_path / "single"), _record(tmp_path / "multi")
    assert multi["processes"] == 2
    assert [s for s, _ in multi["losses"]] == [s for s, _ in single["losses"]]
    for (_, a), (_, b) in zip(multi["losses"], single["losses"]):
        assert a == pytest.approx(b, rel=1e-4)


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    code, _, err = _run(tmp_path, "--config.train_steps=30", "--config.optimizer.learning_rate=1e30",
                        "--config.optimizer.grad_clip=0", "--config.optimizer.warmup_frac=0")
    assert code == 2
    assert "loss became" in err and "at step" in err and "Traceback" not in err
