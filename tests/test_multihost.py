"""The sharded linear losses across 2 processes x 4 CPU devices.

Starts two copies of tests/multihost_worker.py on localhost, which join one
JAX job with `jax.distributed.initialize` (gloo CPU collectives) and run the
vocabulary-parallel losses of `jxent.sharded` inside `jax.shard_map` on the
8 global devices: the vocabulary split 8 ways, and a (2, 4) mesh of tokens
x vocabulary whose every row and column spans both processes. Each process
writes the values and the gradients (for x and the whole W and bias,
gathered from the shards) it sees; this test compares both with the plain
jxent functions, unsharded, in its own process.

Skipped only when the installed jaxlib has no gloo collectives. The workers
are killed on failure of either, or after TIMEOUT seconds.
"""

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time

import multihost_worker as worker
import numpy as np
import pytest

RTOL, ATOL = 2e-5, 2e-6
TIMEOUT = 240  # Seconds for both workers, start-up and compilation included;
# about 14 s of CPU each, and 85 s wall under -n 2 on 2 busy cores.
ROOT = pathlib.Path(__file__).resolve().parents[1]
# Another process took the coordinator's port between `_free_port` and its
# bind: try again with another port.
PORT_TAKEN = "Failed to start RPC server"


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def _workers(out_dir, port):
  """The running workers; any still alive on exit are killed."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
  processes = []
  try:
    for i in range(worker.NUM_PROCESSES):
      with open(out_dir / f"process_{i}.log", "w") as log:
        processes.append(subprocess.Popen(
            [sys.executable, worker.__file__, str(i), str(port),
             str(out_dir)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
    yield processes
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
    for p in processes:
      p.wait()


def _wait(processes, deadline):
  """Waits for all to exit, or one to fail, or the deadline; True if past it.

  A failed worker ends the wait: the other would only wait for it.
  """
  while any(p.poll() is None for p in processes):
    if any(p.poll() not in (None, 0) for p in processes):
      return False
    if time.monotonic() > deadline:
      return True
    time.sleep(0.1)
  return False


def _run_workers(out_dir):
  """Runs the workers; returns the exit statuses and a report of them."""
  for _ in range(3):
    with _workers(out_dir, _free_port()) as processes:
      timed_out = _wait(processes, time.monotonic() + TIMEOUT)
    codes = [p.returncode for p in processes]
    logs = [(out_dir / f"process_{i}.log").read_text(errors="replace")
            for i in range(len(processes))]
    if codes[0] == 0 or PORT_TAKEN not in logs[0]:
      break
  report = "\n".join(
      f"--- process {i}: exit status {code} ---\n{log[-5000:]}"
      for i, (code, log) in enumerate(zip(codes, logs, strict=True)))
  if timed_out:
    report = f"killed after {TIMEOUT} s\n{report}"
  return codes, report


def test_sharded_linear_losses_match_unsharded_across_two_processes(
    tmp_path):
  codes, report = _run_workers(tmp_path)
  if worker.SKIP in codes:
    pytest.skip(f"gloo CPU collectives are unavailable:\n{report}")
  assert codes == [0] * worker.NUM_PROCESSES, report

  want = worker.reference()
  # No reference is trivially zero, so the comparison below can fail.
  assert all(np.any(v != 0) for v in want.values())
  for i in range(worker.NUM_PROCESSES):
    with np.load(tmp_path / f"process_{i}.npz") as got:
      assert sorted(got.files) == sorted(
          f"{mesh}/{key}" for mesh in worker.MESHES for key in want)
      for name in got.files:
        key = name.split("/", 1)[1]
        assert got[name].dtype == want[key].dtype, name
        np.testing.assert_allclose(got[name], want[key], rtol=RTOL,
                                   atol=ATOL,
                                   err_msg=f"process {i}: {name}")
