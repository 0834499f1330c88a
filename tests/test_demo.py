"""The README's stand-in main job trains and beats chance."""

from sphereembed import demo


def test_demo_learns_a_spherical_embedding(capsys):
  result = demo.main(["--steps", "120", "--seed", "1"])
  assert result["last_loss"] < 0.5 * result["first_loss"]
  assert result["accuracy"] > 0.5  # chance is 1/8
  assert "nearest-class-mean accuracy" in capsys.readouterr().out
