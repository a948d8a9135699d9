"""Multi-process JAX on one machine: two processes on 127.0.0.1 with 4 simulated CPU devices each."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from experiments import distributed

REPO = Path(__file__).resolve().parents[2]

# Each process contributes its own rows of a global [8, 5] matrix (its "host batch"); a jitted
# reduction over the global array needs both processes' data, so the result proves they joined.
WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from experiments import distributed
    info = distributed.initialize(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = np.asarray(json.loads(sys.argv[4]), np.float32)[info.index * 4:(info.index + 1) * 4]
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), rows)
    total = jax.jit(lambda a: jnp.sum(a * a, axis=0), out_shardings=NamedSharding(mesh, P()))(x)
    print(json.dumps({"index": info.index, "count": info.count, "primary": info.is_primary,
                      "devices": jax.device_count(), "local": jax.local_device_count(),
                      "total": np.asarray(total).tolist()}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_join_and_reduce_a_global_array():
    data = np.random.default_rng().standard_normal((8, 5)).round(3)
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, address, "2", str(i), json.dumps(data.tolist())],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["index"] for o in outputs) == [0, 1]
    assert [o["primary"] for o in sorted(outputs, key=lambda o: o["index"])] == [True, False]
    for o in outputs:
        assert o["count"] == 2 and o["devices"] == 8 and o["local"] == 4
        np.testing.assert_allclose(o["total"], (data.astype(np.float32) ** 2).sum(0), rtol=1e-5)


def test_partial_explicit_flags_are_rejected():
    with pytest.raises(ValueError, match="give all of --coordinator, --num_processes and --process_id"):
        distributed.initialize("127.0.0.1:1234", None, 0)


def test_single_process_without_flags_or_cluster(monkeypatch):
    for var in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    info = distributed.initialize()
    assert (info.index, info.count, info.is_primary) == (0, 1, True)
