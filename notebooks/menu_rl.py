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
# # Experiment 6: AE-RL under reward-scale drift (PPO on gymnax, small)
#
# PPO written in JAX (one jitted `lax.scan` over updates, `vmap` over
# seeds) on gymnax's CartPole-v1. Every 8 updates the reward the agent sees
# changes: ×1 → ×10 → ×0.1 → +1; the return shown is the true one.
# `fixed` holds PPO's defaults; `ae_rl` lets an `ae.controller` drive the
# entropy coefficient (from the reward progress R) and the clip range (from
# the policy loss's variance V and the gradient alignment ρ), and
# `ae.ae_adam` the step size. The full experiment (CartPole and Acrobot,
# four methods, five seeds) is `python benchmarks/experiments.py --only 6`;
# this one is 32 updates and 2 seeds, compiled at XLA's fast level.

# %%
import matplotlib.pyplot as plt
import numpy as np

from ae_jax.bench.menu import rl

cfg = rl.PPOConfig(env="CartPole-v1", updates=32, rescale_every=8)
results = {m: rl.run_method(cfg, m, seeds=[1, 2], fast_compile=True)
           for m in ("fixed", "ae_rl")}
for name, rec in results.items():
  s = rl.summarize(rec, cfg)
  print(f"{name:7s} final return {s['final'].mean():6.1f}  AUC "
        f"{s['auc'].mean():6.1f}  time-to-recover per rescale "
        f"{np.round(s['ttr'].mean(0), 1)}  γ factor "
        f"{s['gamma_factor'].mean():.2f}")

# %%
steps = rl.env_steps(cfg)
fig, axes = plt.subplots(1, 5, figsize=(18, 3.4))
panels = [("true_return", "true return", "linear"),
          ("ent_coef", "entropy coefficient", "log"),
          ("clip", "clip range", "linear"),
          ("lr", "step size", "log"),
          ("gamma", "γ = α‖g‖", "log")]
for ax, (key, title, scale) in zip(axes, panels):
  for name, rec in results.items():
    ax.plot(steps, rec[key].mean(0), label=name)
  for s in range(cfg.rescale_every, cfg.updates, cfg.rescale_every):
    ax.axvline(s * cfg.steps_per_update, color="0.6", ls="--", lw=0.7)
  ax.set(title=title, xlabel="environment steps", yscale=scale)
axes[0].legend()
plt.tight_layout()
plt.show()
