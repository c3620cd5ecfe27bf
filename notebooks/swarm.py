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
# # AE-Swarm: a population of AE trajectories
#
# Four AE-AdamW members with different priors (initial learning rate and
# progress gain) train on one regression task in rounds. After each round
# the members are scored on a validation set, soft selection
# `w = softmax(-β s)` reallocates the next round's step budgets, and the
# coefficients (log α, β1, β2, log ε, log λ) are nudged toward their
# weighted mean. Parameters are never copied between members.

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

from ae_jax import swarm

key = jax.random.PRNGKey(0)
data = swarm.regression_data(jax.random.fold_in(key, 0), n=2048, n_train=1536)
family = swarm.ae_adamw_family(learning_rate=1e-3, weight_decay=1e-4)
priors = swarm.reference_priors(4, learning_rate=1e-3)
pop = swarm.init_population(jax.random.fold_in(key, 1),
                            lambda k: swarm.init_mlp(k, (10, 32, 1)),
                            family, priors)
priors

# %% [markdown]
# Six rounds of 400 member steps in all (each member's budget follows the
# selection weights, never below 40); the round is one jitted function, so
# the progress bar moves once per round.

# %%
config = swarm.SwarmConfig(pop_size=4, rounds=6, total_steps=400,
                           min_steps=40, beta=5.0, kappa=0.05,
                           batch_size=64, mode="chunked")
pop, history = swarm.run(config, family, swarm.mse_loss, pop, data,
                         jax.random.fold_in(key, 2))
print(history.table())

# %% [markdown]
# The history holds, per round, every member's score, weight, budget and
# coefficients; their mean and spread across members shrink as the
# consensus acts.

# %%
for name in ("learning_rate", "b1", "b2"):
  mean, std = (history.coefficient_mean()[name],
               history.coefficient_std()[name])
  print(f"{name:>14}: mean {np.array2string(mean, precision=5)}")
  print(f"{'':>14}  std  {np.array2string(std, precision=5)}")

# %%
fig = swarm.plot_history(history)
plt.show()
