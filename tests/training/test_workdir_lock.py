"""One run per workdir: WorkdirLock between two real processes."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from sphereembed.training.lock import LOCK_FILE, WorkdirLock, WorkdirLockedError

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLDER = """
import sys
from sphereembed.training.lock import WorkdirLock
with WorkdirLock(sys.argv[1], enabled=True):
  print("locked", flush=True)
  sys.stdin.read()
print("released", flush=True)
"""


def _start_holder(workdir):
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  return holder


def test_second_process_fails_fast_naming_the_holder(tmp_path):
  workdir = tmp_path / "run"
  holder = _start_holder(workdir)
  try:
    start = time.monotonic()
    with pytest.raises(WorkdirLockedError) as error:
      with WorkdirLock(str(workdir), enabled=True):
        pytest.fail("entered a locked workdir")
    assert time.monotonic() - start < 2.0
    message = str(error.value)
    assert f"pid {holder.pid}" in message and socket.gethostname() in message, message
    assert "another --workdir" in message
    assert isinstance(error.value, RuntimeError)
    record = json.loads((workdir / LOCK_FILE).read_text())
    assert record["pid"] == holder.pid
  finally:
    holder.stdin.close()
    assert holder.stdout.readline().strip() == "released"
    holder.wait(timeout=30)
  # Free once the first run has ended.
  with WorkdirLock(str(workdir), enabled=True) as lock:
    assert lock.held
    assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == os.getpid()
  assert not lock.held and (workdir / LOCK_FILE).read_text() == ""


def test_lock_of_a_killed_process_is_free(tmp_path):
  workdir = tmp_path / "run"
  holder = _start_holder(workdir)
  holder.kill()  # no cleanup at all: the OS releases the lock
  holder.wait(timeout=30)
  assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == holder.pid  # stale content
  with WorkdirLock(str(workdir), enabled=True) as lock:
    assert lock.held


def test_second_lock_in_one_process_and_disabled_lock(tmp_path):
  with WorkdirLock(str(tmp_path), enabled=True):
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
      with WorkdirLock(str(tmp_path), enabled=True):
        pass
    # Processes other than 0 of a multi-process run take no lock.
    with WorkdirLock(str(tmp_path), enabled=False) as other:
      assert not other.held
  # Default: process 0 of this single-process run takes it.
  with WorkdirLock(str(tmp_path / "new")) as lock:
    assert lock.held and (tmp_path / "new" / LOCK_FILE).exists()


def test_lock_is_released_on_an_error(tmp_path):
  with pytest.raises(ZeroDivisionError):
    with WorkdirLock(str(tmp_path), enabled=True):
      1 / 0  # pylint: disable=pointless-statement
  with WorkdirLock(str(tmp_path), enabled=True) as lock:
    assert lock.held


def _runner_takes_the_lock() -> bool:
  import inspect  # pylint: disable=import-outside-toplevel
  from sphereembed import runner  # pylint: disable=import-outside-toplevel
  return "WorkdirLock(" in inspect.getsource(runner)


@pytest.mark.skipif(not _runner_takes_the_lock(), reason="runner.py does not take the lock yet")
def test_run_on_a_locked_workdir_fails_before_writing_anything(tmp_path):
  from sphereembed import methods  # pylint: disable=import-outside-toplevel
  from sphereembed.runner import train_and_evaluate  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "run"
  holder = _start_holder(workdir)
  try:
    config = methods.default_config()
    config.update(data_dir=str(tmp_path / "no_data_needed"), figures=False, tensorboard=False)
    with pytest.raises(WorkdirLockedError, match=f"pid {holder.pid}"):
      train_and_evaluate(config, str(workdir))
    assert sorted(os.listdir(workdir)) == [LOCK_FILE]
  finally:
    holder.stdin.close()
    holder.wait(timeout=30)
