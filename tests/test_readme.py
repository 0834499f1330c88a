"""The README's promises hold: its Python quick-start runs as written, and CI runs its test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _fenced(language):
  return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_quickstart_runs_as_written():
  blocks = _fenced("python")
  assert blocks, "README has no python quick-start block"
  for block in blocks:
    exec(compile(block, "README.md", "exec"), {})  # pylint: disable=exec-used


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
