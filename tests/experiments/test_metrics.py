"""TensorBoard events read back by TensorBoard's own readers, deferred metrics, and the profiler window."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups, metadata

from configs import cpu_tiny
from experiments import metrics, validate

HPARAMS = {"L": 2, "d": 128, "n_q": 4, "n_kv": 2, "d_h": 32, "N": 393_216, "T": 128, "attention_impl": "auto"}


def write_fake_run(logdir, *, n_kv=2, completed=True):
    writer = metrics.MetricsWriter(logdir, is_primary=True)
    writer.hparams({**HPARAMS, "n_kv": n_kv})
    writer.train(1, loss=5.5, learning_rate=1e-4, grad_norm=3.0)
    writer.train(2, loss=4.25, learning_rate=2e-4, grad_norm=2.5, tokens_per_s=1234.5, step_time_s=0.125)
    writer.evaluation(2, [{"context": 32, "loss": 4.5, "tokens": 512}, {"context": 128, "loss": 4.0 + n_kv, "tokens": 2048}])
    writer.scalars(2, {"profile/mfu": 0.375})
    writer.close(completed=completed)


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_scalars_and_hparams_read_back(tmp_path):
    write_fake_run(tmp_path)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert scalars(acc, "train/loss") == [(1, 5.5), (2, 4.25)]
    assert scalars(acc, "train/learning_rate") == [(1, pytest.approx(1e-4)), (2, pytest.approx(2e-4))]
    assert scalars(acc, "train/grad_norm") == [(1, 3.0), (2, 2.5)]
    assert scalars(acc, "perf/tokens_per_s") == [(2, 1234.5)]
    assert scalars(acc, "perf/step_time_s") == [(2, 0.125)]
    assert scalars(acc, "eval/loss_T32") == [(2, 4.5)]
    assert scalars(acc, "eval/loss_T128") == [(2, 6.0)]
    assert scalars(acc, "profile/mfu") == [(2, 0.375)]
    assert metrics.eval_tag(128) == "eval/loss_T128"

    # the hparams session lives in the run's own folder (no timestamped sub-run)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    assert set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert {k: v.number_value for k, v in start.hparams.items() if k != "attention_impl"} == {
        k: v for k, v in HPARAMS.items() if k != "attention_impl"
    }
    assert start.hparams["attention_impl"].string_value == "auto"
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS


def test_hparams_dashboard_compares_a_sweep(tmp_path):
    """What TensorBoard's HPARAMS tab serves for two runs: one session each, named after its run
    folder, hparams from both (n_kv differs), and the final value of every scalar as a metric."""
    write_fake_run(tmp_path / "run_mqa" / "tb", n_kv=1)
    write_fake_run(tmp_path / "run_mha" / "tb", n_kv=4, completed=False)
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(tmp_path))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(tmp_path), data_provider=provider, multiplexer=mux))
    request_context = tb_context.RequestContext()
    experiment = get_experiment.Handler(request_context, backend, "", api_pb2.GetExperimentRequest()).run()
    infos = {h.name: h for h in experiment.hparam_infos}
    assert {"L", "d", "n_q", "n_kv", "d_h", "N", "T"} <= set(infos)
    assert infos["n_kv"].differs and not infos["L"].differs
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"train/loss", "eval/loss_T32", "eval/loss_T128", "profile/mfu"} <= metric_tags

    request = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=10,
        allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING, api_pb2.STATUS_UNKNOWN],
        aggregation_type=api_pb2.AGGREGATION_AVG,
        col_params=[api_pb2.ColParams(hparam=h) for h in infos] + [api_pb2.ColParams(metric=m.name) for m in experiment.metric_infos],
    )
    groups = list_session_groups.Handler(request_context, backend, "", request).run().session_groups
    by_run = {g.name: g for g in groups}
    assert set(by_run) == {"run_mqa/tb", "run_mha/tb"}
    for run, n_kv, status in (("run_mqa/tb", 1, api_pb2.STATUS_SUCCESS), ("run_mha/tb", 4, api_pb2.STATUS_FAILURE)):
        group = by_run[run]
        assert len(group.sessions) == 1 and group.sessions[0].status == status
        assert group.hparams["n_kv"].number_value == n_kv
        final = {m.name.tag: (m.training_step, m.value) for m in group.metric_values}
        assert final["eval/loss_T128"] == (2, 4.0 + n_kv) and final["train/loss"] == (2, 4.25)


def test_non_primary_writer_writes_nothing(tmp_path):
    logdir = tmp_path / "tb"
    writer = metrics.MetricsWriter(logdir, is_primary=False)
    writer.hparams(HPARAMS)
    writer.train(1, loss=1.0, learning_rate=1.0, grad_norm=1.0, tokens_per_s=1.0, step_time_s=1.0)
    writer.evaluation(1, [{"context": 8, "loss": 1.0, "tokens": 8}])
    writer.scalars(1, {"profile/x": 1.0})
    writer.flush()
    writer.close()
    assert not logdir.exists() and list(tmp_path.iterdir()) == []


def test_tags_tensorboard_would_rewrite_are_rejected(tmp_path):
    writer = metrics.MetricsWriter(tmp_path, is_primary=False)
    with pytest.raises(ValueError, match="eval/loss@T=8"):
        writer.scalars(1, {"eval/loss@T=8": 1.0})


def test_run_hparams_from_config():
    config = validate.validate(cpu_tiny.get_config())
    hp = metrics.run_hparams(config, non_embedding_params=123)
    assert {k: hp[k] for k in ("L", "d", "n_q", "n_kv", "d_h", "N", "T")} == {
        "L": 2, "d": 128, "n_q": 4, "n_kv": 2, "d_h": 32, "N": 123, "T": 128,
    }
    assert hp["D"] == config.train_steps * config.batch_size * config.seq_len
    metrics.session_start_summary(hp)  # every value is of a type the plugin stores


class Probe:
    """A stand-in device scalar that records when the host reads it."""

    def __init__(self, value, log, name):
        self.value, self.log, self.name = value, log, name

    def __float__(self):
        self.log.append(("read", self.name))
        return float(self.value)


def test_deferred_metrics_read_step_n_after_step_n_plus_1_is_dispatched():
    log, deferred = [], metrics.DeferredMetrics()
    for step, loss in ((1, 3.5), (2, 3.25), (3, 3.0)):
        log.append(("dispatch", step))
        out = deferred.push(step, {"loss": Probe(loss, log, step), "grad_norm": np.float32(0.5)})
        if step == 1:
            assert out is None
        else:
            assert out == metrics.StepMetrics(step - 1, {"loss": 3.5 if step == 2 else 3.25, "grad_norm": 0.5})
    assert deferred.flush() == metrics.StepMetrics(3, {"loss": 3.0, "grad_norm": 0.5})
    assert deferred.flush() is None
    assert log == [("dispatch", 1), ("dispatch", 2), ("read", 1), ("dispatch", 3), ("read", 2), ("read", 3)]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_deferred_metrics_raise_on_non_finite_loss_naming_the_step(bad):
    deferred = metrics.DeferredMetrics()
    deferred.push(6, {"loss": jnp.float32(2.0)})
    assert deferred.push(7, {"loss": jnp.float32(bad)}).step == 6
    with pytest.raises(metrics.NonFiniteLossError, match=r"loss became (nan|inf) at step 7\b") as err:
        deferred.push(8, {"loss": jnp.float32(1.0)})
    assert err.value.step == 7 and isinstance(err.value, FloatingPointError)


def test_trace_window_writes_an_xplane_of_the_window_only(tmp_path):
    f = jax.jit(lambda x: jnp.tanh(x @ x))
    state = jnp.eye(16)
    window = metrics.TraceWindow(start_step=2, num_steps=2, logdir=tmp_path)
    active = []
    try:
        for step in range(1, 7):
            with window.step(step, state):
                active.append(window.active)
                state = f(state)
    finally:
        window.close(state)
    assert active == [False, False, True, True, False, False]
    traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1
    assert traced_steps(traces[0]) == [3, 4]


def traced_steps(xplane) -> list[int]:
    """step_num of every StepTraceAnnotation("train") in a trace."""
    profile = jax.profiler.ProfileData.from_file(str(xplane))
    return sorted(
        dict(event.stats)["step_num"]
        for plane in profile.planes
        for line in plane.lines
        for event in line.events
        if event.name == "train"
    )


def test_trace_window_disabled_and_closed_early(tmp_path):
    f = jax.jit(lambda x: x + 1)
    off = metrics.TraceWindow(start_step=0, num_steps=0, logdir=tmp_path / "off")
    with off.step(1, jnp.zeros(2)):
        pass
    off.close(jnp.zeros(2))
    assert not (tmp_path / "off").exists()

    # training ends (or fails) inside the window: close() still stops and writes the trace
    window = metrics.TraceWindow(start_step=0, num_steps=100, logdir=tmp_path / "early")
    state = jnp.zeros(2)
    with window.step(1, state):
        state = f(state)
    window.close(state)
    assert not window.active
    (trace,) = (tmp_path / "early" / "plugins" / "profile").glob("*/*.xplane.pb")
    assert traced_steps(trace) == [1]


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("start_step", -1, "non-negative integer"),
        ("num_steps", -3, "non-negative integer"),
        ("start_step", 600, "must be < train_steps=600"),  # cpu_tiny trains 600 steps
    ],
)
def test_bad_profile_window_rejected(field, value, allowed):
    config = cpu_tiny.get_config()
    config.unlock()
    config.profile.num_steps = 2
    config.profile[field] = value
    with pytest.raises(validate.ConfigError, match=allowed) as err:
        validate.validate(config)
    assert err.value.field == f"profile.{field}"


def test_profile_window_disabled_by_default():
    config = validate.validate(cpu_tiny.get_config())
    assert config.profile.num_steps == 0 and config.eval_contexts == ()
