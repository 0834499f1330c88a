"""The README's promises hold: its Python quick-start runs as written, and CI runs its test command."""

import os
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _fenced(language):
  return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_quickstart_runs_as_written():
  # The blocks before the one that needs a trained model (that one runs below).
  blocks = re.findall(r"```python\n(.*?)```", README.split("<!-- use-model -->", 1)[0], flags=re.S)
  assert blocks, "README has no python quick-start block"
  for block in blocks:
    exec(compile(block, "README.md", "exec"), {})  # pylint: disable=exec-used


def test_own_data_and_use_a_model_run_as_written(tmp_path):
  """The own-data commands and the use-a-model block, on a few PNGs, with a short schedule."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  commands = _fenced_after(README.split("<!-- own-data -->", 1)[1]).splitlines()
  use_model = re.search(r"```python\n(.*?)```", README.split("<!-- use-model -->", 1)[1],
                        flags=re.S).group(1)
  rng = np.random.default_rng(0)
  for folder, count in (("photos", 24), ("new_photos", 2)):
    for k, name in enumerate(("ankle", "bag", "coat")):
      target = tmp_path / folder / name if folder == "photos" else tmp_path / folder
      target.mkdir(parents=True, exist_ok=True)
      for i in range(count):
        pixels = rng.integers(0, 80, (20, 20, 3), dtype=np.uint8)
        pixels[2 + 6 * k:6 + 6 * k, 2:18] = 250
        Image.fromarray(pixels).save(target / f"{name}{i}.png")
  for name in ("configs", "experiments"):
    (tmp_path / name).symlink_to(ROOT / name)
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  quick = ["--config.num_epochs=2", "--config.features=(4,8)", "--config.hidden=16",
           "--config.embedding_dim=8", "--config.batch_size=12", "--config.figures=False"]
  assert len(commands) == 2 and commands[0].startswith("python -m experiments.mnist")
  for command, extra in zip(commands, (quick, [])):
    args = shlex.split(command)
    args[0] = sys.executable
    done = subprocess.run(args + extra, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
  assert (tmp_path / "predictions.jsonl").read_text().count("\n") == 6
  script = f"import os\nos.chdir({str(tmp_path)!r})\n" + use_model
  done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert (tmp_path / "exported" / "model.json").exists()


def test_two_setup_commands_are_present_and_ci_uses_the_test_one():
  main_command = README.split("<!-- main-command -->", 1)[1]
  test_command = README.split("<!-- test-command -->", 1)[1]
  main_line = _fenced_after(main_command)
  test_line = _fenced_after(test_command)
  assert "pip install" in main_line
  assert main_line.endswith("python -m experiments.mnist --config=configs/ncl_2d.py")
  assert "pip install" in test_line and "pytest" in test_line
  assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()


def _fenced_after(text):
  match = re.search(r"```bash\n(.*?)```", text, flags=re.S)
  assert match, "no bash block after the marker"
  return match.group(1).strip()
