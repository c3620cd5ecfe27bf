# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Harness: resonance and law knock-outs (experiments 7, 8, 18, small)
#
# * **Stale gradients** (experiment 7): on a quadratic bowl, gradients taken
#   k steps late make momentum methods oscillate; the opt-in resonance law
#   AE-5 should shrink α when ρ turns negative.
# * **Knock-outs and knock-ins** (experiment 18): every law of the canonical
#   chain can be removed (`canonical_laws(..., hypergradient=False)`) and
#   every opt-in law added (`canonical_laws(..., gauge=True)`); the registry
#   names them `ae_sgdm-no_hypergradient`, `ae_sgdm+gauge`, ...

# %%
import matplotlib.pyplot as plt
import numpy as np

from ae_jax.bench import metrics, runner, tasks

task = tasks.get("quadratic", steps=300)
fig, ax = plt.subplots(figsize=(6, 3.5))
for name in ("sgdm", "ae_sgdm", "ae_sgdm+resonance"):
  res = runner.run(task, name, seeds=[1, 2], learning_rate=0.5, delay=4)
  s = res.summary(task)
  print(f"{name:22s} final f {np.round(s['final'], 4)}  oscillation "
        f"{np.round(s['oscillation'], 3)}")
  ax.semilogy(res.eval_steps, np.nanmean(res.metric, 0), label=name)
ax.set(title="quadratic, gradients 4 steps stale", xlabel="step",
       ylabel="f(x)")
ax.legend()
plt.show()

# %%
reg = tasks.get("regression", steps=300)
for name in ("ae_sgdm", "ae_sgdm-no_hypergradient", "ae_sgdm+gauge"):
  res = runner.run(reg, name, seeds=[1, 2])
  s = res.summary(reg)
  print(f"{name:20s} final {metrics.fmt_ci(s['final'])}  var log γ "
        f"{metrics.fmt_ci(s['var_log_gamma'], 3)}")
