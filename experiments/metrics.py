"""TensorBoard scalars and hparams (tensorboardX, no TensorFlow), deferred device metrics, and a profiler window."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import re
import time
from typing import Any, Iterable, Iterator, Mapping

import jax
from ml_collections import config_dict
from tensorboardX import SummaryWriter
from tensorboardX.proto import api_pb2, plugin_hparams_pb2, summary_pb2

# Tags the hparams plugin reads (tensorboard/plugins/hparams/metadata.py).
_HPARAMS_PLUGIN = "hparams"
_SESSION_START_TAG = "_hparams_/session_start_info"
_SESSION_END_TAG = "_hparams_/session_end_info"
# Characters tensorboardX keeps in a tag; it silently rewrites any other to "_" (e.g. "@", "=").
_VALID_TAG = re.compile(r"[-\w.][-/\w.]*")


def eval_tag(context: int) -> str:
    """Scalar tag of the held-out loss at one context length, e.g. 'eval/loss_T2048'."""
    return f"eval/loss_T{context}"


def run_hparams(config: config_dict.ConfigDict, non_embedding_params: int) -> dict[str, int | float | str]:
    """The hyper-parameters a sweep is compared on, from a validated config (train_steps resolved)."""
    m = config.model
    return {
        "L": m.num_layers,
        "d": m.d_model,
        "n_q": m.num_q_heads,
        "n_kv": m.num_kv_heads,
        "d_h": m.head_dim,
        "d_ff": m.d_ff,
        "N": non_embedding_params,
        "T": config.seq_len,
        "D": config.train_steps * config.batch_size * config.seq_len,
        "batch_size": config.batch_size,
        "learning_rate": config.optimizer.learning_rate,
        "attention_impl": config.attention_impl,
        "seed": config.seed,
    }


def _hparams_summary(tag: str, content: plugin_hparams_pb2.HParamsPluginData) -> summary_pb2.Summary:
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=_HPARAMS_PLUGIN, content=content.SerializeToString())
    )
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=metadata)])


def session_start_summary(hparams: Mapping[str, bool | int | float | str]) -> summary_pb2.Summary:
    """The hparams plugin's session-start record: this run's hyper-parameter values."""
    info = plugin_hparams_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[name].number_value = float(value)
        elif isinstance(value, str):
            info.hparams[name].string_value = value
        else:
            raise TypeError(f"hparam {name!r} has type {type(value).__name__}; use bool, int, float or str")
    return _hparams_summary(_SESSION_START_TAG, plugin_hparams_pb2.HParamsPluginData(session_start_info=info, version=0))


def session_end_summary(completed: bool) -> summary_pb2.Summary:
    """The hparams plugin's session-end record (success, or failure for a run that stopped early)."""
    status = api_pb2.STATUS_SUCCESS if completed else api_pb2.STATUS_FAILURE
    info = plugin_hparams_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    return _hparams_summary(_SESSION_END_TAG, plugin_hparams_pb2.HParamsPluginData(session_end_info=info, version=0))


class MetricsWriter:
    """TensorBoard events of one run in ``logdir``; with is_primary=False every call is a no-op and
    no file is created (only process 0 of a multi-process run writes).

    The run's folder is its own hparams session: the session records go into the same event
    file as the scalars (not tensorboardX.add_hparams' timestamped sub-run), and no experiment
    record is written, so TensorBoard derives the HPARAMS columns from every run of a sweep:
    hyper-parameters from all sessions, and one metric column per scalar tag, showing its last
    value (the final train loss, the final held-out loss at each context length, ...).
    """

    def __init__(self, logdir: str | pathlib.Path, *, is_primary: bool):
        self._writer = SummaryWriter(str(logdir)) if is_primary else None

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Any scalars by tag, e.g. the profiler's 'profile/...' figures. Tags use letters, digits
        and - _ . / only, so what TensorBoard shows is the tag that was written."""
        for tag in values:
            if not _VALID_TAG.fullmatch(tag):
                raise ValueError(f"scalar tag {tag!r} has characters TensorBoard would rewrite; use letters, digits, - _ . /")
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), step)

    def train(
        self,
        step: int,
        *,
        loss: float,
        learning_rate: float,
        grad_norm: float,
        tokens_per_s: float | None = None,
        step_time_s: float | None = None,
    ) -> None:
        """One training step's numbers; the rates are omitted while unknown (the compile step)."""
        values = {"train/loss": loss, "train/learning_rate": learning_rate, "train/grad_norm": grad_norm}
        if tokens_per_s is not None:
            values["perf/tokens_per_s"] = tokens_per_s
        if step_time_s is not None:
            values["perf/step_time_s"] = step_time_s
        self.scalars(step, values)

    def evaluation(self, step: int, rows: Iterable[Mapping[str, Any]]) -> None:
        """Held-out losses: rows {"context", "loss", ...} as experiments.evaluate.evaluate returns them."""
        self.scalars(step, {eval_tag(r["context"]): r["loss"] for r in rows})

    def hparams(self, hparams: Mapping[str, bool | int | float | str]) -> None:
        """Start this run's hparams session (call once, at the start, so a crashed run still shows)."""
        if self._writer is not None:
            self._writer.file_writer.add_summary(session_start_summary(hparams))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self, *, completed: bool = True) -> None:
        """End the hparams session (failure status when the run stopped early), flush, close."""
        if self._writer is None:
            return
        self._writer.file_writer.add_summary(session_end_summary(completed))
        self._writer.close()
        self._writer = None


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; ``step`` is the step that produced it."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(
            f"loss became {value} at step {step}; the last checkpoint before it is the last good state; "
            "lower optimizer.learning_rate or check the data"
        )


@dataclasses.dataclass(frozen=True)
class StepMetrics:
    """One step's metrics on the host."""

    step: int
    values: dict[str, float]


class DeferredMetrics:
    """Holds step n's device scalars and reads them only once step n+1 has been dispatched, so the
    host never waits on the step the device is running (STYLE point 10).

    ``push(n, {"loss": ..., ...})`` right after dispatching step n returns step n-1's floats;
    ``flush()`` after the last step returns the last one. Reading a non-finite "loss" raises
    NonFiniteLossError naming the step that produced it.
    """

    def __init__(self):
        self._pending: tuple[int, Mapping[str, Any]] | None = None

    def push(self, step: int, metrics: Mapping[str, Any]) -> StepMetrics | None:
        previous, self._pending = self._pending, (step, metrics)
        return None if previous is None else _to_host(*previous)

    def flush(self) -> StepMetrics | None:
        previous, self._pending = self._pending, None
        return None if previous is None else _to_host(*previous)


def _to_host(step: int, metrics: Mapping[str, Any]) -> StepMetrics:
    values = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
    if not math.isfinite(values["loss"]):
        raise NonFiniteLossError(step, values["loss"])
    return StepMetrics(step, values)


class TraceWindow:
    """A jax.profiler trace of whole training steps start_step+1 .. start_step+num_steps (1-based),
    written to logdir/plugins/profile/<time>/*.xplane.pb, where TensorBoard's profile plugin
    looks for it when logdir is the run's TensorBoard folder. num_steps=0 disables it.

    Use ``with window.step(step, state): state = train_step(state, ...)`` for every step, where
    ``state`` holds the previous step's outputs: the window blocks on them at its edges, so no
    earlier step runs inside the trace and the last traced step has finished when it stops;
    then ``window.close(state)`` after the loop (also on error) stops a window still open.
    """

    def __init__(self, start_step: int, num_steps: int, logdir: str | pathlib.Path):
        self.first, self.last = start_step + 1, start_step + num_steps
        self.logdir = pathlib.Path(logdir)
        self.active = False

    @contextlib.contextmanager
    def step(self, step: int, state: Any) -> Iterator[None]:
        if self.active and step > self.last:
            self.close(state)
        if not self.active and self.first <= step <= self.last:
            jax.block_until_ready(state)
            jax.profiler.start_trace(str(self.logdir))
            self.active = True
        if self.active:
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                yield
        else:
            yield

    def close(self, state: Any) -> None:
        """Stop the trace once ``state`` (the last traced step's outputs) is computed."""
        if self.active:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
