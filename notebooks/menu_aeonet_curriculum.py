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
# # Menu: AEONet gated depth (experiment 14) and AE-Curriculum, small
#
# * **AEONet**: residual blocks `x + g_k f_k(x)` on sklearn digits. AE evolves
#   one capacity coefficient `c` (gates `g_k = clip(c - k, 0, 1)`) and the
#   dropout rate from the training loss: capacity grows while progress is
#   steady and shrinks when the loss variance spikes (here a short
#   label-noise burst halfway). Baselines: all gates 1; gates learned by
#   gradient.
# * **AE-Curriculum**: the magnitude of random shifts of the training digits
#   is a coefficient driven the same way; against fixed strengths and a
#   linear schedule, scored on the clean test set.
#
# The full versions: `ae-jax menu 14`, `ae-jax menu curriculum`, or
# `benchmarks/experiments.py --only 14,curriculum`.

# %%
import matplotlib.pyplot as plt
import numpy as np

from ae_jax.bench import metrics
from ae_jax.bench.menu import aeonet, curriculum

seeds = [1, 2]
cfg = aeonet.Config(n_blocks=6, steps=300, eval_every=20, warmup=30)
outs = aeonet.run_methods(cfg, aeonet.load(cfg), seeds)
print(f"AEONet, {cfg.steps} steps, seeds {seeds}")
print(f"{'method':28s} {'final val acc':>14s} {'val AUC':>16s} "
      f"{'capacity':>16s}")
for m, out in outs.items():
  s = aeonet.summarise(out, cfg)
  print(f"{aeonet.LABELS[m]:28s} {metrics.fmt_ci(s['final'], 3):>14s} "
        f"{metrics.fmt_ci(s['auc'], 3):>16s} "
        f"{metrics.fmt_ci(s['capacity'], 3):>16s}")

# %%
ccfg = curriculum.Config(steps=400, eval_every=25, warmup=30)
methods = ("ae", "fixed_0", "fixed_mid", "linear")
couts = curriculum.run_methods(ccfg, curriculum.load(ccfg), seeds, methods)
labels = curriculum.labels(ccfg)
print(f"AE-Curriculum, {ccfg.steps} steps, seeds {seeds}")
for m, out in couts.items():
  s = curriculum.summarise(out, ccfg)
  print(f"{labels[m]:26s} clean acc {metrics.fmt_ci(s['final'], 3):>14s}  "
        f"mean strength {metrics.fmt_ci(s['strength'], 3)} px")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
phase = np.arange(cfg.steps) / cfg.steps
for m, out in outs.items():
  axes[0].plot(phase, out["gate"].mean(0), label=aeonet.LABELS[m])
axes[0].axvspan(*cfg.burst, color="0.85", zorder=0)
axes[0].set(title="AEONet: mean gate", xlabel="training phase", ylim=(0, 1.05))
axes[0].legend(fontsize=8)
for m, out in couts.items():
  axes[1].plot(out["strength"].mean(0), label=labels[m])
axes[1].set(title="augmentation strength (px)", xlabel="step")
axes[1].legend(fontsize=8)
plt.show()
