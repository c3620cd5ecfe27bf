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
# # Harness: core sanity (experiment 1, small)
#
# The harness (`ae_jax.bench`) trains every optimizer from the same
# initialisation, on the same minibatches, for the same number of steps, as
# one jitted `lax.scan` vmapped over seeds. This notebook reruns a small
# version of experiment 1 (an MLP on y = Ax + ε) against a few peers, shows
# the table `ae-jax compare` prints, the loss bands, the AE coefficients,
# and a small learning-rate-sensitivity sweep. The full-size numbers are in
# `benchmarks/RESULTS.md` (`python benchmarks/experiments.py`).

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from ae_jax.bench import metrics, report, runner, tasks

task = tasks.get("regression", steps=300)
results, rows = report.compare(
    task, ["adamw", "prodigy", "ae_adamw"], seeds=2,
    out="figures")

# %%
display(Image("figures/regression_curves.png"))
display(Image("figures/regression_coefficients.png"))

# %% [markdown]
# Learning-rate sensitivity: the final test MSE against the (initial)
# learning rate. An optimizer that adapts its rate should have a flatter
# curve than its fixed-rate base.

# %%
grid = np.array([1e-4, 1e-2, 1.0])
short = tasks.get("regression", steps=200)
sweeps = {n: (grid, runner.lr_sweep(short, n, grid, seeds=[1]))
          for n in ("adamw", "ae_adamw")}
for n, (g, f) in sweeps.items():
  print(n, dict(zip([f"{x:.0e}" for x in g], np.round(f[:, 0], 4))))
display(Image(report.plot_lr_sensitivity(sweeps, short, "figures/sens.png")))
