"""Join a multi-process JAX job: explicit flags, or the environment of SLURM and Cloud TPU VMs."""

from __future__ import annotations

import dataclasses
import logging
import os

import jax

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands in the job; process 0 is the one that logs and writes records."""

    index: int
    count: int

    @property
    def is_primary(self) -> bool:
        return self.index == 0


def _detected_cluster() -> str | None:
    """The scheduler whose environment jax.distributed can read by itself, if any."""
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    if "TPU_WORKER_HOSTNAMES" in os.environ or "CLOUD_TPU_TASK_ID" in os.environ:
        return "Cloud TPU"
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> ProcessInfo:
    """Start jax.distributed when the job has several processes, and say where this one stands.

    Explicit arguments win (all three or none: `--coordinator=HOST:PORT --num_processes=N
    --process_id=I`, e.g. several processes on 127.0.0.1); otherwise SLURM (srun) and Cloud TPU
    VM environments are detected by jax itself; otherwise this is a single-process run.
    """
    explicit = (coordinator, num_processes, process_id)
    if any(x is not None for x in explicit) and not all(x is not None for x in explicit):
        raise ValueError(
            "give all of --coordinator, --num_processes and --process_id, or none of them "
            f"(got coordinator={coordinator!r}, num_processes={num_processes!r}, process_id={process_id!r})"
        )
    if coordinator is not None:
        if num_processes > 1:
            # must run before anything touches a backend; CPU processes talk over gloo (jax's default)
            jax.distributed.initialize(coordinator, num_processes, process_id)
    elif (cluster := _detected_cluster()) is not None:
        log.info("joining the %s job described by the environment", cluster)
        jax.distributed.initialize()
    return ProcessInfo(jax.process_index(), jax.process_count())
