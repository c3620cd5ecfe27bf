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
# # Harness: gauge robustness and the hyper-cliff (experiments 9, 10, 13, small)
#
# * **Gauge robustness** (experiments 9 and 10): multiply the loss by
#   c ∈ {0.1, 10}, or change the batch size; the theory predicts that AE's
#   time-to-target stays within 10% (the gauge law AE-8 holds the effective
#   step γ = α‖g‖).
# * **Hyper-cliff** (experiment 13): start at 1000x the default rate; the
#   prediction is no NaN and a return to stability without restarts (the
#   budget AE-6 and the brake cap the change of log α per step).

# %%
import matplotlib.pyplot as plt
import numpy as np

from ae_jax.bench import metrics, runner, tasks

base = tasks.get("regression", steps=300)
print("time-to-target (steps, mean of 2 seeds) by loss scale c")
for name in ("sgdm", "ae_sgdm"):
  ttt = {}
  for c in (0.1, 10.0):
    task = tasks.scaled(base, c)
    res = runner.run(task, name, seeds=[1, 2])
    ttt[c] = np.mean(res.summary(task)["ttt"])
  print(f"  {name:8s}", {c: round(float(v), 1) for c, v in ttt.items()})

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name, lr in (("adamw", 1.0), ("ae_adamw", 1.0)):
  res = runner.run(base, name, seeds=[1, 2], learning_rate=lr)
  print(f"{name} at lr {lr}: NaN/inf steps {int(metrics.nonfinite(res.loss).sum())}, "
        f"time to stability {metrics.time_to_stability(res.loss)}, "
        f"final test MSE {np.round(metrics.final(res.metric), 4)}")
  axes[0].semilogy(np.nanmean(res.loss, 0), label=name)
  if res.coefficients:
    axes[1].semilogy(res.coefficients["learning_rate"].T, label=name)
    print("  max per-step |Δlog α|:",
          np.round(metrics.max_abs_dlog(res.coefficients["learning_rate"]), 3))
axes[0].set(title="training loss from lr = 1", xlabel="step")
axes[1].set(title="AE learning rate", xlabel="step")
axes[0].legend()
plt.show()
