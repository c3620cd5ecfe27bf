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
# # The menu: plateau escape, coupling curve, AEO-Eq (experiments 11, 12, 15)
#
# * **Plateau escape** (experiment 11): a clipped-sigmoid student started on
#   a plateau where every weight's gradient is exactly zero. The theory's
#   noise law (AE-4) should raise σ on the stall and escape without
#   blow-ups.
# * **The coupling curve** (experiment 12): a sweep of `ae_adamw+drive`
#   over starting (α0, β1); the theory predicts a negative correlation
#   between log α and log 1/(1 − β1) in the best-performing region.
# * **AEO-Eq** (experiment 15): a gated basis library on
#   y = sin x + 0.3 x² + ε with an AE-controlled L1 strength λ, against a
#   fixed λ and scikit-learn's LassoCV.
#
# The full versions: `ae-jax menu 11` (12, 15), or
# `benchmarks/experiments.py --only 11,12,15`.

# %%
import matplotlib.pyplot as plt
import numpy as np

from ae_jax.bench import metrics, runner
from ae_jax.bench.menu import basis, coupling, plateau

task = plateau.plateau_task(steps=600)
seeds = [1, 2]
specs = {"adamw": "adamw",
         "ae_adamw, σ law": plateau.methods()[
             f"ae_adamw, σ law from {plateau.SIGMA0:g}"]}
print(f"plateau level {task.target / plateau.EXIT_FRACTION:.4f}, exit "
      f"threshold {task.target:.4f}")
results = {}
for label, spec in specs.items():
  res = runner.run(task, spec, seeds)
  results[label] = res
  exits = plateau.exit_steps(res.metric, res.eval_steps, task.target)
  print(f"  {label:16s} exit steps {exits}, final test MSE "
        f"{np.round(res.metric[:, -1], 4)}, relapsed "
        f"{plateau.relapsed(res.metric, task.target)}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for label, res in results.items():
  axes[0].plot(res.eval_steps, res.metric.mean(0), label=label)
axes[0].axhline(task.target, color="k", ls="--", lw=0.8)
axes[0].set(yscale="log", xlabel="step", title="held-out MSE")
axes[0].legend()
sigma = results["ae_adamw, σ law"].coefficients["sigma"]
axes[1].plot(sigma.T)
axes[1].set(yscale="log", xlabel="step", title="σ (noise law), per seed")
plt.show()

# %% [markdown]
# ## The coupling curve on a small sweep (Rosenbrock)

# %%
from ae_jax.bench import tasks

out = coupling.sweep(tasks.get("rosenbrock", steps=300),
                     coupling.VARIANTS[coupling.PRIMARY], [1, 2], 300,
                     alphas=(1e-3, 1e-2, 1e-1), betas=(0.8, 0.9))
summ = coupling.summarise(out)
print("runs:", summ["n"], " final f(x):", np.round(summ["final"], 5))
print("within-run Pearson r per run:", np.round(summ["pearson"], 2))
print("region r, best quartile [bootstrap 95%]:",
      np.round(summ["region_best"], 2))
occ, ea, eb = coupling.occupancy(summ["za"], summ["zb"], 30,
                                 ((summ["za"].min(), summ["za"].max()),
                                  (summ["zb"].min(), summ["zb"].max())))
plt.imshow(np.log10(occ.T + 1e-6), origin="lower", aspect="auto",
           extent=(ea[0], ea[-1], eb[0], eb[-1]))
plt.xlabel("log α")
plt.ylabel("log 1/(1 − β1)")
plt.title("occupancy (log10 fraction of steps)")
plt.colorbar()
plt.show()

# %% [markdown]
# ## AEO-Eq: the AE λ against a fixed λ and LassoCV

# %%
cfg = basis.Config()
data = basis.stacked([1, 2], cfg)
ae_out = basis.run_ae(data, cfg, basis.W_V[0])
fixed = basis.run_fixed(data, cfg, lams=(1e-2,))[1e-2]
lasso = basis.run_lasso_cv(data)
for label, o in (("AE λ", ae_out), ("fixed λ = 0.01", fixed),
                 ("LassoCV", lasso)):
  sets = [sorted(s, key=basis.NAMES.index) for s in o["sets"]]
  print(f"  {label:15s} test MSE {metrics.fmt_ci(o['test'], 3):18s} "
        f"active {sets}")
plt.plot(ae_out["lam"].T)
plt.yscale("log")
plt.xlabel("step")
plt.title("AE λ per seed")
plt.show()
