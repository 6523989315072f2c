"""``ntkdyn celeba --quick`` as two processes (jax.distributed on loopback, gloo CPU collectives, one
CPU device each) writes the same results.json as one process with two devices."""

import json
import os
import socket
import subprocess
import sys

import pytest

CMD = [sys.executable, "-c", "import sys; from ntkdyn.cli import main; sys.exit(main())"]
ARGS = ["celeba", "--quick", "--workers", "2"]


def _env(tmp_path, **extra):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        MPLBACKEND="Agg",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    for name in ("JAX_ENABLE_X64", "XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "NTKDYN_MULTIHOST"):
        env.pop(name, None)
    return env | extra


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
@pytest.mark.slow
def test_two_processes_match_one_process_on_two_devices(tmp_path):
    one = tmp_path / "one"
    proc = subprocess.run(
        [*CMD, *ARGS, "--out", str(one)],
        env=_env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    two = tmp_path / "two"
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [*CMD, *ARGS, "--out", str(two)],
            env=_env(
                tmp_path,
                JAX_COORDINATOR_ADDRESS=address,
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(rank),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]

    config = json.loads((two / "config.json").read_text())
    assert (config["processes"], config["devices"]) == (2, 2)
    assert json.loads((one / "config.json").read_text())["processes"] == 1
    a = json.loads((one / "results.json").read_text())
    b = json.loads((two / "results.json").read_text())
    assert a == b
