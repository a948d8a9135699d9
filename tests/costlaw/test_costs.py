"""Tests for costlaw.costs: FLOPs, memory, the objective Z and the cost report, against hand arithmetic."""

import json

import pytest

from costlaw.arch import Architecture, paper_architecture
from costlaw.costs import (
    ObjectiveSpec,
    cost_report,
    dtype_bytes,
    inference_flops,
    inference_memory,
    kv_cache_values,
    mean_attended_context,
    objective_z,
    training_flops,
    training_flops_per_token,
    training_memory,
)

# Llama-3-style heads (32, 8) on the 1.2B ladder shape, d_ff = 4096, tied, V = 50304.
LLAMA = Architecture(36, 1536, 32, 8, 64, 50304)
LLAMA_N_MATMUL = 36 * (1536 * 64 * (2 * 32 + 2 * 8) + 3 * 1536 * 4096) + 50304 * 1536
LLAMA_N_TOTAL = LLAMA_N_MATMUL + (2 * 36 + 1) * 1536  # + norm scales; tied table counted once


def test_hand_numbers_are_what_we_think():
    assert LLAMA_N_MATMUL == 1_039_859_712
    assert LLAMA_N_TOTAL == 1_039_971_840


def test_dtype_bytes_and_aliases():
    assert [dtype_bytes(x) for x in ("float32", "f32", "bfloat16", "bf16", "float16", "fp16", "float8", "fp8", "int8")] == [
        4, 4, 2, 2, 2, 2, 1, 1, 1]
    with pytest.raises(ValueError, match="unknown dtype 'int4'; allowed: float32"):
        dtype_bytes("int4")


def test_inference_flops_at_128k():
    flops = inference_flops(LLAMA, 131072)
    assert flops.time_invariant == 2 * LLAMA_N_MATMUL == 2_079_719_424
    assert flops.context == 4 * 131072 * 36 * 64 * 32 == 38_654_705_664
    assert flops.total == 40_734_425_088


def test_inference_memory_values_and_bytes():
    memory = inference_memory(LLAMA, 131072, param_dtype="bf16", kv_dtype="float8")
    cache = 2 * 131072 * 36 * 64 * 8
    assert (memory.weight_values, memory.cache_values) == (LLAMA_N_TOTAL, cache)
    assert memory.total_values == LLAMA_N_TOTAL + 4_831_838_208
    assert (memory.weight_bytes, memory.cache_bytes) == (2 * LLAMA_N_TOTAL, 1 * cache)
    assert memory.total_bytes == 2 * LLAMA_N_TOTAL + cache


def test_batch_multiplies_only_the_cache():
    one = inference_memory(LLAMA, 4096)
    four = inference_memory(LLAMA, 4096, batch_size=4)
    assert four.weight_values == one.weight_values
    assert four.cache_values == 4 * one.cache_values == kv_cache_values(LLAMA, 4096, batch_size=4)


def test_training_flops_use_the_causal_mean_context():
    per_token = training_flops_per_token(LLAMA, 8192)
    assert per_token.time_invariant == 6 * LLAMA_N_MATMUL
    assert per_token.context == 12 * 36 * 64 * 32 * 4096
    assert training_flops_per_token(LLAMA, 8192, causal=False).context == 12 * 36 * 64 * 32 * 8192
    run = training_flops(LLAMA, 8192, 24_000_000_000)
    assert run.total == 24_000_000_000 * (6 * LLAMA_N_MATMUL + 12 * 36 * 64 * 32 * 4096)
    assert mean_attended_context(8192) == 4096 and mean_attended_context(8191) == 4095.5
    assert mean_attended_context(8192, causal=False) == 8192


def test_training_memory_breakdown_bf16_and_f32():
    bf16 = training_memory(LLAMA, 8192, batch_size=2)
    n = LLAMA_N_TOTAL
    assert (bf16.params, bf16.grads, bf16.optimizer, bf16.master_weights) == (2 * n, 2 * n, 8 * n, 4 * n)
    assert bf16.activations == 8192 * 1536 * 36 * 2 * 2
    assert bf16.total == 16 * n + 8192 * 1536 * 36 * 2 * 2
    f32 = training_memory(LLAMA, 8192, param_dtype="float32", act_coeff=3.0)
    assert (f32.params, f32.grads, f32.optimizer, f32.master_weights) == (4 * n, 4 * n, 8 * n, 0)
    assert f32.activations == 3.0 * 8192 * 1536 * 36 * 4


def test_objective_z_by_hand():
    assert objective_z(16.0, 27.0, lam=0.5) == pytest.approx(0.5 * 4 + 0.5 * 3)
    assert objective_z(16.0, 27.0, lam=0.25, alpha=0.25, beta=1.0) == pytest.approx(0.25 * 2 + 0.75 * 27)
    # Defaults at the 128K Llama point: sqrt(11.743620096 GB) = 3.4268966, cbrt(40.734425088 GFLOP) = 3.4407559.
    z = ObjectiveSpec().z(LLAMA_N_TOTAL + 4_831_838_208, 11_743_620_096, 40_734_425_088)
    assert z == pytest.approx(0.9 * 3.4268966 + 0.1 * 3.4407559, rel=1e-7)


def test_lambda_extremes_isolate_memory_and_flops():
    memory_only = ObjectiveSpec(lam=1.0, alpha=0.5, memory_unit="GiB")
    assert memory_only.z(10, 3 * 2**30, 1e12) == pytest.approx(3**0.5)
    flops_only = ObjectiveSpec(lam=0.0, beta=1 / 3, flops_unit="TFLOP")
    assert flops_only.z(10, 3 * 2**30, 8e12) == pytest.approx(2.0)


def test_memory_units_and_dtype_override():
    assert ObjectiveSpec(memory_unit="values").memory_in_unit(5e9, 123.0) == 5e9
    assert ObjectiveSpec(memory_unit="bytes").memory_in_unit(5e9, 123.0) == 123.0
    assert ObjectiveSpec(memory_unit="GB", memory_dtype="f32").memory_in_unit(5e9, 123.0) == 20.0
    assert ObjectiveSpec(flops_unit="FLOP").flops_in_unit(7.0) == 7.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"lam": 1.1}, "lam"),
        ({"lam": -0.1}, "lam"),
        ({"alpha": 0.0}, "alpha"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"memory_unit": "MB"}, "memory_unit"),
        ({"flops_unit": "PFLOP"}, "flops_unit"),
        ({"memory_dtype": "int4"}, "dtype"),
    ],
)
def test_bad_objective_specs_are_rejected(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ObjectiveSpec(**kwargs)


@pytest.mark.parametrize("bad", [0, -5, float("nan"), True])
def test_bad_contexts_are_rejected(bad):
    with pytest.raises(ValueError, match="context"):
        inference_flops(LLAMA, bad)


def test_costs_are_affine_in_context():
    t1, t2 = 8192, 131072
    mean = cost_report(LLAMA, (t1 + t2) / 2, train_context=(t1 + t2) / 2)
    ends = [cost_report(LLAMA, t, train_context=t) for t in (t1, t2)]

    def average(path):
        values = []
        for report in ends:
            node = report
            for key in path:
                node = node[key]
            values.append(node)
        return sum(values) / 2

    for path in [("flops", "total"), ("memory_values", "total"), ("memory_bytes", "total")]:
        got = mean["inference"][0]
        for key in path:
            got = got[key]
        assert got == pytest.approx(average(("inference", 0, *path)), rel=1e-12)
    assert mean["training"]["flops_per_token"]["total"] == pytest.approx(
        average(("training", "flops_per_token", "total")), rel=1e-12)
    assert mean["training"]["memory_bytes"]["total"] == pytest.approx(
        average(("training", "memory_bytes", "total")), rel=1e-12)


def test_cost_report_sections_and_json_round_trip():
    report = cost_report(LLAMA, [8192, 131072], train_tokens=1_000_000, kv_dtype="fp8")
    assert json.loads(json.dumps(report)) == report
    assert set(report) >= {"architecture", "params", "inference", "training", "conventions", "objective"}
    assert report["architecture"]["d_ff"] == 4096
    assert report["params"]["matmul"] == LLAMA_N_MATMUL
    assert [entry["context"] for entry in report["inference"]] == [8192, 131072]
    assert report["inference"][1]["memory_bytes"]["kv_cache"] == 4_831_838_208  # fp8: one byte per value
    assert report["dtypes"]["kv_cache"] == "float8"
    training = report["training"]
    assert (training["context"], training["mean_attended_context"]) == (8192, 4096)
    assert training["flops_per_run"]["total"] == 1_000_000 * training["flops_per_token"]["total"]
    assert cost_report(LLAMA, 1024)["training"]["flops_per_run"] is None


def test_paper_table_convention_counts_two_ffn_matrices():
    paper = paper_architecture("85M")
    paper_row = Architecture(12, 768, 12, 12, 64, 50304, ffn_matrices=2)
    flops = inference_flops(paper_row, 8192)
    assert flops.time_invariant == 2 * (12 * (768 * 64 * (2 * 12 + 2 * 12) + 2 * 768 * 2048) + 50304 * 768)
    assert inference_flops(paper, 8192).time_invariant - flops.time_invariant == 2 * 12 * 768 * 2048


def test_numpy_scalars_are_accepted_and_the_report_stays_json_able():
    import numpy as np

    arch = Architecture(np.int64(36), 1536, np.int64(32), 8, 64, 50304)
    assert type(arch.num_layers) is int and arch == LLAMA
    report = cost_report(arch, np.array([8192, 131072]), train_context=np.int64(8192), train_tokens=np.int64(10))
    assert json.loads(json.dumps(report)) == report
    assert report["inference"][1]["flops"]["total"] == 40_734_425_088
