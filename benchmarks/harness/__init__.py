"""The experiment harness of issue #6: tasks, optimizers, a runner, metrics.

::

  from benchmarks.harness import tasks, optimizers, runner, metrics
  task = tasks.get("regression")
  res = runner.run(task, "ae_adamw", seeds=[1, 2, 3, 4, 5])
  res.summary(task)["ttt"]        # time-to-target per seed

``compare`` (the core of ``ae-jax compare``) runs several optimizers and
prints the table; ``report`` draws the figures.
"""

from benchmarks.harness import metrics, optimizers, runner, tasks

__all__ = ["metrics", "optimizers", "runner", "tasks"]
