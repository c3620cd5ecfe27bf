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
# # AE-Swarm when the right rate is unknown: the spread case
#
# Eight self-tuning AE-AdamW members start with learning rates spread over
# four decades (1e-5 … 1e-1). Each member's step-size law moves its rate,
# and AE-2's leak pulls it back toward the member's own start where the
# law's signal is noise, so the population keeps its spread (without the
# anchor, `self_tuning_family(leak=0)`, the law brings every member within a
# factor of 2-10 of one rate in ~50 steps). After each round the members are ranked on a
# validation set; rank selection `w = softmax(-β r/(M-1))` moves the next
# round's step budgets toward the best members (whatever the loss scale).
# The consensus step κ, which nudges the coefficients toward their weighted
# mean, is off by default: on this case's tuning seeds κ = 0.05 cost
# validation loss at every β tried (`benchmarks/swarm_beta.py`); the last plot shows what
# κ = 0.05 does to the rates. At the end the
# swarm is compared, at equal total steps, with the best of the same
# members trained independently, with PBT and with Optuna
# (`ae-jax swarm --spread` runs the full comparison; this is a small
# version).

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

from ae_jax import swarm
from ae_jax.bench import swarm_spread

task = swarm_spread.regression_task()
pop_size, steps, rounds = 8, 240, 6        # T = 8 x 240 member steps
hp = swarm_spread.starts("rates", pop_size)
hp["learning_rate"]

# %% [markdown]
# ## The swarm's rounds: budgets flow; with κ > 0, coefficients agree

# %%
family = swarm.self_tuning_family()
total = pop_size * steps // rounds
key = jax.random.PRNGKey(0)
pop = swarm.init_population(key, task.init_params, family,
                            {k: np.asarray(v) for k, v in hp.items()})


def run_swarm(kappa):
  # SwarmConfig's defaults: rank selection at β = 1, no consensus (κ = 0).
  cfg = swarm.SwarmConfig(pop_size=pop_size, rounds=rounds,
                          total_steps=total, min_steps=total // (4 * pop_size),
                          kappa=kappa, mode="chunked",
                          batch_size=task.batch_size)
  return swarm.run(cfg, family, task.loss_fn, pop, task.data, key,
                   progress=False)[1]


history = run_swarm(swarm.SwarmConfig.kappa)
pulled = run_swarm(0.05)
print(history.table())

# %%
fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
r = np.arange(1, rounds + 1)
axes[0].plot(r, history.scores, "-o", ms=3)
axes[0].set(title="validation loss per member", xlabel="round",
            yscale="log")
axes[1].stackplot(r, history.budgets.T)
axes[1].set(title="budget flow (steps per member)", xlabel="round")
axes[2].plot(r, history.coefficients["learning_rate"], "-o", ms=3)
axes[2].set(title="α per member (κ = 0, the default)", xlabel="round",
            yscale="log")
axes[3].plot(r, pulled.coefficients["learning_rate"], "-o", ms=3)
axes[3].set(title="α per member after a consensus of κ = 0.05",
            xlabel="round", yscale="log")
fig.tight_layout()

# %% [markdown]
# ## Equal total steps: the swarm against its baselines

# %%
# A small version (three of the methods); `ae-jax swarm --spread` runs all
# five (Optuna and the hindsight-best AdamW too) on three tasks.
results = swarm_spread.compare(tasks=["regression"], settings=["rates"],
                               seeds=[0, 1], pop_size=pop_size, steps=steps,
                               rounds=rounds, log=None,
                               methods=["swarm", "ae-independent", "pbt"])
print(swarm_spread.table(results))
print("swarm/best-baseline:", round(swarm_spread.ratio(results), 3))
