"""A run stopped as by Ctrl-C or a preemption at a chosen train step."""

from sphereembed.runner import train_and_evaluate


def preempted_run(config, workdir: str, module, at_call: int) -> None:
  """Runs ``config`` in ``workdir`` until ``module.train_step``'s call ``at_call`` raises KeyboardInterrupt.

  The runner saves the last finished step on the way out; the real train
  step is back in place afterwards, so the next ``train_and_evaluate``
  resumes.

  Raises:
    AssertionError: the run finished before call ``at_call``.
  """
  real_step, calls = module.train_step, [0]

  def preempted_step(*args, **kwargs):
    calls[0] += 1
    if calls[0] == at_call:
      raise KeyboardInterrupt("simulated preemption")
    return real_step(*args, **kwargs)

  module.train_step = preempted_step
  try:
    train_and_evaluate(config, workdir)
  except KeyboardInterrupt:
    return
  finally:
    module.train_step = real_step
  raise AssertionError(f"the run finished before train step call {at_call}")
