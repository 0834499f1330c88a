"""Checkpoint integrity: checksums, the fallback to an earlier step, the config in a checkpoint."""

import json
import logging as std_logging
import os
import shutil
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from sphereembed import methods
from sphereembed.runner import train_and_evaluate
from sphereembed.training import checkpoints
from sphereembed.training.checkpoints import Checkpointer, CorruptCheckpointError
from tests.training.fake_data import write_fake_mnist

CONFIG = {"learning_rate": 0.1, "features": [4, 8]}


def _state(value: float) -> dict:
  return {"params": {"w": jnp.full((3, 4), value, jnp.float32),
                     "b": jnp.arange(5, dtype=jnp.float32) * value},
          "count": jnp.asarray(int(value), jnp.int32)}


def _fresh() -> dict:
  return {"params": {"w": jnp.zeros((3, 4), jnp.float32), "b": jnp.zeros(5, jnp.float32)},
          "count": jnp.asarray(0, jnp.int32)}


def _assert_state_equal(a, b):
  for key in ("w", "b"):
    np.testing.assert_array_equal(np.asarray(a["params"][key]), np.asarray(b["params"][key]))
    assert a["params"][key].dtype == b["params"][key].dtype
  assert int(a["count"]) == int(b["count"])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoint folder with steps 1 and 2 (states of 1.5 and 2.5), config and checksums."""
  directory = str(tmp_path_factory.mktemp("ckpt") / "train")
  checkpointer = Checkpointer(directory, max_to_keep=2, config=CONFIG)
  checkpointer.save(1, _state(1.5))
  checkpointer.save(2, _state(2.5))
  checkpointer.close()
  return directory


def _copy(saved, tmp_path) -> str:
  target = str(tmp_path / "train")
  shutil.copytree(saved, target)
  return target


def _flip_bit(path: str) -> None:
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x10
    f.seek(0)
    f.write(bytes(data))


def _step_files(step_dir: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(root, name), step_dir)
                for root, _, names in os.walk(step_dir) for name in names)


def test_intact_checkpoint_restores_exactly_with_its_files(saved, tmp_path):
  directory = _copy(saved, tmp_path)
  files = _step_files(os.path.join(directory, "2"))
  assert checkpoints.CHECKSUMS_FILE in files and checkpoints.CONFIG_FILE in files
  assert "_CHECKPOINT_METADATA" in files and len(files) > 5
  checkpointer = Checkpointer(directory)
  try:
    restored = checkpointer.restore_or_keep(_fresh())
  finally:
    checkpointer.close()
  _assert_state_equal(restored, _state(2.5))
  assert checkpoints.verify_checksums(os.path.join(directory, "2"))
  path, config = checkpoints.saved_config(directory)
  assert config == CONFIG and path.endswith(os.path.join("2", "config.json"))
  # A folder of phases (checkpoints/<phase>/<step>) too.
  assert checkpoints.saved_config(os.path.dirname(directory))[1] == CONFIG


def test_every_flipped_bit_in_the_latest_checkpoint_is_detected(saved, tmp_path):
  """One bit flipped in any file of the step folder: an error naming it, or the fallback."""
  files = [f for f in _step_files(os.path.join(saved, "2"))
           if os.path.getsize(os.path.join(saved, "2", f)) > 0]
  assert len(files) > 5
  for n, rel in enumerate(files):
    directory = _copy(saved, tmp_path / str(n))
    step_dir = os.path.join(directory, "2")
    _flip_bit(os.path.join(step_dir, rel))
    checkpointer = Checkpointer(directory)
    try:
      with pytest.raises(CorruptCheckpointError) as error:
        checkpointer.restore_or_keep(_fresh())
      message = str(error.value)
      assert step_dir in message, (rel, message)
      assert os.path.basename(rel) in message, (rel, message)
      assert "delete" not in message.lower(), message
      assert "fallback=True" in message and "--workdir" in message, message
      # The fallback restores step 1 exactly, and moves step 2 aside (kept, not deleted).
      restored = checkpointer.restore_or_keep(_fresh(), fallback=True)
      _assert_state_equal(restored, _state(1.5))
      assert checkpointer.latest_step() == 1, rel
      assert os.path.isdir(step_dir + ".corrupt") and not os.path.exists(step_dir), rel
      # Training saves step 2 afresh, and it restores.
      checkpointer.save(2, _state(7.0))
      _assert_state_equal(checkpointer.restore_or_keep(_fresh()), _state(7.0))
    finally:
      checkpointer.close()


def test_fallback_warns_and_every_damaged_step_is_an_error(saved, tmp_path, caplog):
  directory = _copy(saved, tmp_path)
  _flip_bit(os.path.join(directory, "2", "_CHECKPOINT_METADATA"))
  checkpointer = Checkpointer(directory)
  with caplog.at_level(std_logging.WARNING):
    restored = checkpointer.restore_or_keep(_fresh(), fallback=True)
  checkpointer.close()
  _assert_state_equal(restored, _state(1.5))
  warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno >= std_logging.WARNING)
  assert "Skipped the damaged checkpoint(s) 2" in warnings and "_CHECKPOINT_METADATA" in warnings

  directory = _copy(saved, tmp_path / "both")
  for step in ("1", "2"):
    _flip_bit(os.path.join(directory, step, "default", "_METADATA"))
  checkpointer = Checkpointer(directory)
  try:
    with pytest.raises(CorruptCheckpointError, match="earlier checkpoint.*cannot be restored"):
      checkpointer.restore_or_keep(_fresh(), fallback=True)
  finally:
    checkpointer.close()
  assert sorted(os.listdir(directory)) == ["1", "2"]  # nothing moved when nothing restores


def test_damaged_only_checkpoint_is_an_error_even_with_fallback(saved, tmp_path):
  directory = _copy(saved, tmp_path)
  shutil.rmtree(os.path.join(directory, "1"))
  _flip_bit(os.path.join(directory, "2", "default", "manifest.ocdbt"))
  checkpointer = Checkpointer(directory)
  try:
    with pytest.raises(CorruptCheckpointError, match="only checkpoint of this phase.*--workdir"):
      checkpointer.restore_or_keep(_fresh(), fallback=True)
  finally:
    checkpointer.close()
  assert os.listdir(directory) == ["2"]


def test_checkpoint_of_an_earlier_version_restores_unverified(saved, tmp_path):
  directory = _copy(saved, tmp_path)
  for step in ("1", "2"):
    for name in (checkpoints.CHECKSUMS_FILE, checkpoints.CONFIG_FILE):
      os.remove(os.path.join(directory, step, name))
  assert not checkpoints.verify_checksums(os.path.join(directory, "2"))
  assert checkpoints.saved_config(directory) is None
  checkpointer = Checkpointer(directory)
  try:
    _assert_state_equal(checkpointer.restore_or_keep(_fresh(), fallback=True), _state(2.5))
  finally:
    checkpointer.close()


def test_missing_file_is_named(saved, tmp_path):
  directory = _copy(saved, tmp_path)
  os.remove(os.path.join(directory, "2", "default", "_METADATA"))
  with pytest.raises(CorruptCheckpointError, match="the file default/_METADATA is missing"):
    checkpoints.verify_checksums(os.path.join(directory, "2"))


def test_closed_event_loop_reports_of_a_failed_restore_are_dropped(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  checkpoints._quiet_closed_loop_callbacks()  # pylint: disable=protected-access
  checkpoints._quiet_closed_loop_callbacks()  # installed once
  unraisable = lambda error, obj=None: types.SimpleNamespace(
      exc_type=type(error), exc_value=error, exc_traceback=None, err_msg=None, object=obj)
  sys.unraisablehook(unraisable(RuntimeError("Event loop is closed")))
  other = unraisable(RuntimeError("something else"))
  sys.unraisablehook(other)
  elsewhere = unraisable(RuntimeError("Event loop is closed"), obj="a coroutine")
  sys.unraisablehook(elsewhere)
  assert seen == [other, elsewhere]


# The runner: a damaged checkpoint falls back, and the config kept in checkpoints.

@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
  return write_fake_mnist(tmp_path_factory.mktemp("fake_mnist"))


def small_config(data_dir, **overrides):
  """7 steps of 32 images, checkpoints at steps 4 and 7."""
  config = methods.default_config()
  config.update(dict(
      data_dir=data_dir, sampler="shuffled", batch_size=32, num_epochs=1, features=(4, 8),
      hidden=32, warmup_steps=2, learning_rate=1e-2, log_every_steps=2,
      checkpoint_every_steps=4, eval_batch_size=64, embedding_dim=2, figures=False,
      tensorboard=False))
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def finished_run(fake_dir, tmp_path_factory):
  """A finished run (checkpoints 4 and 7) and its metrics."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  metrics = train_and_evaluate(small_config(fake_dir), str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints" / "train")) == ["4", "7"]
  return workdir, metrics


def _copy_run(finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run[0], workdir)
  return workdir


def test_run_resumes_from_the_earlier_checkpoint_when_the_latest_is_damaged(
    fake_dir, finished_run, tmp_path):
  workdir = _copy_run(finished_run, tmp_path)
  data = workdir / "checkpoints" / "train" / "7" / "default"
  _flip_bit(str(next(p for p in sorted(data.rglob("*")) if p.is_file() and p.stat().st_size > 50
                     and "metadata" not in p.name.lower())))
  metrics = train_and_evaluate(small_config(fake_dir), str(workdir))
  assert metrics["resumed_from_step"] == {"train": 4}
  assert metrics["test_accuracy"] == finished_run[1]["test_accuracy"]
  assert sorted(os.listdir(workdir / "checkpoints" / "train")) == ["4", "7", "7.corrupt"]


def test_run_with_every_checkpoint_damaged_is_a_clear_error(fake_dir, finished_run, tmp_path):
  workdir = _copy_run(finished_run, tmp_path)
  for step in ("4", "7"):
    _flip_bit(str(workdir / "checkpoints" / "train" / step / "default" / "manifest.ocdbt"))
  with pytest.raises(CorruptCheckpointError) as error:
    train_and_evaluate(small_config(fake_dir), str(workdir))
  message = str(error.value)
  assert "checkpoints/train/7" in message and "manifest.ocdbt" in message, message
  assert "--workdir" in message and "delete" not in message.lower(), message


def test_missing_config_json_is_checked_against_the_checkpoint(fake_dir, finished_run, tmp_path):
  workdir = _copy_run(finished_run, tmp_path)
  os.remove(workdir / "config.json")
  with pytest.raises(ValueError, match=r"different config.*learning_rate.*checkpoints/train/7"):
    train_and_evaluate(small_config(fake_dir, learning_rate=5e-3), str(workdir))
  # The same config resumes (at the end) and writes config.json again.
  metrics = train_and_evaluate(small_config(fake_dir), str(workdir))
  assert metrics["resumed_from_step"] == {"train": 7}
  assert json.loads((workdir / "config.json").read_text())["learning_rate"] == 1e-2


@pytest.mark.parametrize("content", [b"", b"{\"seed\": 0, \"learn", b"\xff\xfe garbage"])
def test_unreadable_config_json_falls_back_to_the_checkpoint(fake_dir, finished_run, tmp_path,
                                                             content):
  workdir = _copy_run(finished_run, tmp_path)
  (workdir / "config.json").write_bytes(content)
  with pytest.raises(ValueError, match=r"different config.*learning_rate"):
    train_and_evaluate(small_config(fake_dir, learning_rate=5e-3), str(workdir))
  # Checkpoints of an earlier version keep no config: a clear error naming the file.
  for step in ("4", "7"):
    os.remove(workdir / "checkpoints" / "train" / step / "config.json")
  with pytest.raises(ValueError, match=r"config.json cannot be read.*keep no config"):
    train_and_evaluate(small_config(fake_dir), str(workdir))
