"""Applications built on ae_jax: the experiment harness, the demos and the
``ae-jax`` command line (install with the ``bench`` extra).

The library proper (laws, controller, presets, adapt, meta, swarm, machine,
tape) never imports this package. The harness of issue #6::

  from ae_jax.bench import tasks, optimizers, runner, metrics
  task = tasks.get("regression")
  res = runner.run(task, "ae_adamw", seeds=[1, 2, 3, 4, 5])
  res.summary(task)["ttt"]        # time-to-target per seed

Modules: :mod:`~ae_jax.bench.tasks` (the task registry),
:mod:`~ae_jax.bench.optimizers` (peers, presets, knock-outs),
:mod:`~ae_jax.bench.runner` (one jitted scan per optimizer, vmapped over
seeds), :mod:`~ae_jax.bench.metrics`, :mod:`~ae_jax.bench.report` (tables,
figures, ``compare``), :mod:`~ae_jax.bench.demo` (``ae-jax demo``),
:mod:`~ae_jax.bench.swarm_demo` and :mod:`~ae_jax.bench.swarm_spread`
(``ae-jax swarm``), :mod:`~ae_jax.bench.cli`. Imported on demand, so that
``import ae_jax.bench.tasks`` does not pull in plotting.
"""
