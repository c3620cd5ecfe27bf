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
# # Harness: models (experiments 2, 3 and 16, small)
#
# * **Image classification** (experiment 2): a small CNN on scikit-learn's
#   8x8 digits (bundled, offline).
# * **Language modelling** (experiment 3): a byte-level causal transformer
#   on the Python standard library's own source (every Python install has
#   it offline); we look at validation perplexity, NaN/inf steps and the
#   β1/β2 trajectories AE gives Adam.
# * **With and without AE** (experiment 16): each base optimizer at its
#   default rate against the same optimizer with AE on top.
#
# Everything here is cut to a few hundred steps and two seeds so that it runs
# in well under a minute on a CPU; the measured figures (5 seeds, 95%
# intervals) are in `benchmarks/RESULTS.md`.

# %%
import matplotlib.pyplot as plt
import numpy as np

from ae_jax.bench import report, runner, tasks

digits = tasks.get("digits_cnn", steps=100, channels=(4, 8))
rows = [report.row(runner.run(digits, n, seeds=[1, 2]), digits)
        for n in ("adamw", "ae_adamw")]
print(report.text_table(rows, ("optimizer", "final", "time-to-target",
                               "NaN/inf steps")))

# %% [markdown]
# Experiment 3, small: one layer, width 32, context 32, 100 steps. AE's
# β1 and β2 move with the measured signals; plain AdamW keeps 0.9 / 0.999.

# %%
lm = tasks.get("char_lm", steps=100, layers=1, d_model=32, context=32,
               n_chars=60_000, target=12.0)
lm_results = [runner.run(lm, n, seeds=[1, 2]) for n in ("adamw", "ae_adamw")]
print(report.text_table([report.row(r, lm) for r in lm_results],
                        ("optimizer", "final", "NaN/inf steps",
                         "oscillation")))
ae_run = lm_results[1]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for r in lm_results:
  axes[0].plot(r.eval_steps, r.metric.mean(0), label=r.optimizer)
axes[0].set(title="validation perplexity", xlabel="step", yscale="log")
axes[0].legend()
axes[1].plot(ae_run.coefficients["b1"].T, lw=0.8)
axes[1].set(title="ae_adamw β1 (per seed)", xlabel="step")
axes[2].plot(1 - ae_run.coefficients["b2"].T, lw=0.8)
axes[2].set(title="ae_adamw 1 - β2 (per seed)", xlabel="step", yscale="log")
fig.tight_layout()
plt.show()

# %% [markdown]
# Experiment 16, small: SGDm with and without AE on the regression task
# (same initialisation and minibatches for both; Adam, AdamW and Adafactor
# are in the full experiment, `benchmarks/RESULTS.md`).

# %%
reg = tasks.get("regression", steps=200)
pairs = [("sgdm", "ae_sgdm")]
for plain, with_ae in pairs:
  a = runner.run(reg, plain, seeds=[1, 2]).summary(reg)["final"]
  b = runner.run(reg, with_ae, seeds=[1, 2]).summary(reg)["final"]
  print(f"{plain:10s} final test MSE {np.mean(a):.4f}   "
        f"{with_ae:13s} {np.mean(b):.4f}")
