"""One run per workdir: an exclusive lock on ``workdir/.lock`` for the whole run.

Two runs on one workdir (started at once, or the second joining mid-run)
would both train to the end and interleave their records in
``metrics.jsonl`` and their checkpoints. :class:`WorkdirLock` takes an
exclusive ``fcntl.flock`` on ``workdir/.lock`` and writes the holder's pid,
host and start time into it; a second run fails at once with a
:class:`WorkdirLockedError` naming them. The operating system releases the
lock when the holding process ends, however it ends (a crash, ``kill -9``),
so a stale ``.lock`` file never blocks the next run.

``flock`` works across hosts on NFSv4 and on local file systems; on a file
system without locks (some Lustre and FUSE mounts) the run goes on unlocked,
with a warning. In a multi-process run only process 0 takes the lock (it
owns the run's files; the other processes' workdir is the same folder).

Usage::

  with WorkdirLock(workdir):
    ...  # the whole run
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import time

from absl import logging

__all__ = ["LOCK_FILE", "WorkdirLock", "WorkdirLockedError"]

#: The lock file, in the workdir.
LOCK_FILE = ".lock"
# flock on a file system that cannot lock: run unlocked rather than not at all.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir."""


def _read_holder(fd: int) -> dict:
  """What the holder wrote into the lock file (it writes right after locking: a short retry)."""
  for _ in range(20):
    try:
      text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
      holder = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
      holder = None
    if isinstance(holder, dict):
      return holder
    time.sleep(0.025)
  return {}


class WorkdirLock:
  """An exclusive lock on ``workdir/.lock`` while the ``with`` block runs.

  Args:
    workdir: the run's folder (created if missing).
    enabled: whether to take the lock; default: in process 0 only
      (``jax.process_index() == 0``), the process that owns the run's files.

  Raises:
    WorkdirLockedError: (on entry) another process holds the lock; the
      message names its pid and host.
  """

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._enabled = enabled
    self._fd: int | None = None

  def __enter__(self) -> "WorkdirLock":
    enabled = self._enabled
    if enabled is None:
      import jax  # pylint: disable=import-outside-toplevel
      enabled = jax.process_index() == 0
    if not enabled:
      return self
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
             f"{holder.get('started', '?')}" if holder else "a process that did not say which")
      raise WorkdirLockedError(
          f"{os.path.abspath(self.workdir)} is in use by another run ({who}; see {self.path}). "
          "Two runs on one workdir would mix their checkpoints and metrics: wait for that run "
          "to end (or stop it), or use another --workdir.") from None
    except OSError as error:
      os.close(fd)
      if error.errno not in _NO_LOCKS:
        raise
      logging.warning("Cannot lock %s (%s): the file system does not support locks. Make sure "
                      "no other run uses this workdir.", self.path, error)
      return self
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def release(self) -> None:
    """Releases the lock (also done by the OS when the process ends). The file stays."""
    if self._fd is not None:
      fd, self._fd = self._fd, None
      try:
        os.ftruncate(fd, 0)  # no stale holder in the file once free
      except OSError:
        pass
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)

  @property
  def held(self) -> bool:
    """Whether this object holds the lock now."""
    return self._fd is not None
