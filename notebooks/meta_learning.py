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
# # Meta-learning the AE law gains (AE-9)
#
# AE-9 says every AE operator is smooth, so the gains of the laws (the drive
# weights W, the leaks Γ, the coupling C, the filter decays, the meta-steps
# η) can be learned by gradient descent through training runs. In ae_jax:
#
# * `smooth=True` replaces every hard gate (stall test, resonance clamp,
#   brake, projection, budget clips) with a sigmoid / softplus surrogate;
# * `ae.LawGains` holds every gain as one pytree, passed to a preset
#   (`ae.ae_sgdm(..., gains=g)`) inside the function we differentiate;
# * `ae.meta` unrolls K training steps with rematerialisation and
#   meta-trains the gains over a family of tasks.
#
# Here: meta-train `ae_sgdm`'s gains on random least-squares problems of
# varied scale and conditioning, then compare the learned gains with the
# defaults on held-out problems. (A small version: it runs in about a
# minute on a CPU. `benchmarks/meta_eval.py` is the full, 5-seed
# comparison.)

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np
import optax

import ae_jax as ae
from ae_jax import meta

family = meta.least_squares_family(dim=8, n_train=64, n_val=32)
config = meta.InnerConfig(steps=30, learning_rate=0.02, momentum=0.9)
default = ae.default_gains(meta.coefficient_names(config))

# %% [markdown]
# ## One meta-gradient
#
# `jax.grad` of a validation loss after K smooth training steps, with
# respect to every gain.

# %%
task = family.sample(jax.random.PRNGKey(0))
grads = jax.jit(jax.grad(
    lambda g: meta.meta_objective(g, task, family, config)))(default)
print("d meta-loss / d eta:", {k: float(v) for k, v in grads.eta.items()})
print("d meta-loss / d W_p(learning_rate):",
      float(grads.drive["learning_rate"].progress))

# %% [markdown]
# ## Meta-training
#
# Each outer step draws 2 new tasks, unrolls 30 steps on each and takes an
# Adam step on the relative offsets of the gains (`ae.meta.Reparam`).

# %%
result = meta.meta_train(family, key=jax.random.PRNGKey(1), config=config,
                         meta_steps=8, tasks_per_step=2,
                         meta_optimizer=optax.adam(0.05))
history = result.history
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
axes[0].plot(history["meta_loss"])
axes[0].set(title="meta-loss (mean log validation gap)", xlabel="outer step")
for name, values in history["gains"].eta.items():
  axes[1].plot(values, label=f"η[{name}]")
axes[1].set(title="meta-steps η", xlabel="outer step", yscale="log")
axes[1].legend()
for field in ("progress", "variance", "phase", "leak"):
  axes[2].plot(getattr(history["gains"].drive["learning_rate"], field),
               label=field)
axes[2].set(title="drive gains of the learning rate", xlabel="outer step")
axes[2].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Before and after, on held-out tasks
#
# Same tasks, initialisation and minibatch order for both gain sets.

# %%
held_out = meta.sample_tasks(family, jax.random.PRNGKey(12345), 4)
before = meta.evaluate(default, family, held_out, config)
after = meta.evaluate(result.gains, family, held_out, config)
for label, ev in (("default gains", before), ("meta-learned", after)):
  print(f"{label:>14}: time-to-target {ev.steps_to_target.mean():5.1f} steps, "
        f"median final val loss {np.median(ev.final_loss):.4f}, "
        f"reached {ev.reached.mean():.0%}")

fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
for label, ev, color in (("default", before, "C0"), ("meta", after, "C1")):
  axes[0].plot(np.median(ev.val_loss, 0), color=color, label=label)
  axes[1].plot(ev.coefficients["learning_rate"].T, color=color, alpha=0.4)
  axes[2].plot(ev.coefficients["momentum"].T, color=color, alpha=0.4)
axes[0].set(title="median validation loss", xlabel="step", yscale="log")
axes[0].legend()
axes[1].set(title="learning rate (each task)", xlabel="step", yscale="log")
axes[2].set(title="momentum (each task)", xlabel="step")
plt.tight_layout()
plt.show()
