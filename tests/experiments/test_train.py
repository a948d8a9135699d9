"""Training end to end on the embedded corpus: the loss falls and the run record is written."""

import json
import math

import pytest
from flax import nnx

from configs import cpu_tiny
from costlaw.arch import param_counts
from experiments import train, validate
from experiments.model import ModelConfig, Transformer


@pytest.mark.slow
def test_short_run_learns_and_writes_record(tmp_path):
    config = cpu_tiny.get_config()
    config.train_steps = 60
    config.log_every = 20
    config.eval_every = 30
    lines = []
    result = train.train(config, tmp_path, echo=lines.append)
    losses = [loss for _, loss in result.losses]
    # a byte model starts near ln(256) nats and must beat it clearly within 60 steps
    assert losses[0] < math.log(256) + 0.5
    assert losses[-1] < losses[0] - 0.5 and losses[-1] < math.log(256) - 2
    assert [e["step"] for e in result.eval_losses] == [30, 60]
    assert all(e["context"] == config.seq_len and e["tokens"] > 0 for e in result.eval_losses)
    assert result.eval_losses[-1]["loss"] < math.log(256) - 2
    record = json.loads(result.record_path.read_text())
    assert record["params"]["total"] == param_counts(validate.architecture(validate.validate(config))).total
    assert record["losses"] == [list(x) for x in result.losses]
    assert any("tok/s" in line and "eta" in line for line in lines)


def test_weight_decay_mask_selects_matrices_only():
    config = validate.validate(cpu_tiny.get_config())
    model = nnx.eval_shape(lambda: Transformer(ModelConfig.from_config(config), nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model))
    mask = train.decay_mask(model, params)
    assert mask["embedding"] is False and mask["final_norm"]["scale"] is False
    layer = mask["layers"][0]
    assert layer["attn_norm"]["scale"] is False
    assert all(layer["attn"][w] for w in ("wq", "wk", "wv", "wo"))
    assert all(layer["mlp"][w] for w in ("w_gate", "w_up", "w_down"))
