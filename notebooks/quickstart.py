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
# # ae_jax quick start
#
# An AE optimizer is an Optax optimizer whose coefficients (learning rate,
# β1, β2, ε, weight decay, noise) evolve every step from filtered training
# signals. This notebook trains a small regression MLP with `ae.ae_adamw`
# and `optax.adamw` from the same initialisation and data order, and plots
# the loss, the coefficients and the signals that drove them.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax

import ae_jax as ae

STEPS = 600

key = jax.random.PRNGKey(0)
kx, kw, kn, kp = jax.random.split(key, 4)
X = jax.random.normal(kx, (512, 8))
y = jnp.sin(X @ jax.random.normal(kw, (8,))) + 0.1 * jax.random.normal(kn, (512,))


def init_mlp(key, sizes=(8, 32, 32, 1)):
  keys = jax.random.split(key, len(sizes) - 1)
  return [(jax.random.normal(k, (a, b)) / jnp.sqrt(a), jnp.zeros(b))
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def loss_fn(params, xb, yb):
  h = xb
  for w, b in params[:-1]:
    h = jnp.tanh(h @ w + b)
  w, b = params[-1]
  return jnp.mean(((h @ w + b)[:, 0] - yb) ** 2)


def train(tx, params, steps=STEPS, batch=64):
  """A jitted lax.scan training loop; logs loss, coefficients and signals.

  Batches are drawn independently (with replacement). A loop that reads
  shuffled epochs instead should tell the preset the epoch length,
  ``ae.ae_adamw(1e-3, batches_per_epoch=X.shape[0] // batch)``: within an
  epoch the batches are anticorrelated, and the step-size law would read
  that as an overshoot (docs/laws.md, "Batches drawn without replacement").
  """
  order = jax.random.randint(jax.random.PRNGKey(1), (steps, batch), 0, X.shape[0])

  def step(carry, idx):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, X[idx], y[idx])
    updates, state = tx.update(grads, state, params, value=loss)
    params = optax.apply_updates(params, updates)
    logs = {"loss": loss}
    if isinstance(state, ae.AdaptState):
      logs.update(coefficients=ae.coefficients(state), signals=ae.signals(state))
    return (params, state), logs

  (params, state), logs = jax.jit(lambda p, s: jax.lax.scan(step, (p, s), order))(
      params, tx.init(params))
  return params, state, logs


params0 = init_mlp(kp)
_, ae_state, ae_logs = train(ae.ae_adamw(learning_rate=1e-3), params0)
_, _, adamw_logs = train(optax.adamw(1e-3, weight_decay=1e-4), params0)

print("final loss  ae_adamw %.4f  adamw %.4f" % (
    ae_logs["loss"][-50:].mean(), adamw_logs["loss"][-50:].mean()))
print({k: float(v) for k, v in ae.coefficients(ae_state).items()})

# %%
fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
axes[0].semilogy(ae_logs["loss"], label="ae_adamw", lw=0.8)
axes[0].semilogy(adamw_logs["loss"], label="adamw", lw=0.8)
axes[0].set_title("minibatch loss"); axes[0].legend()
axes[1].semilogy(ae_logs["coefficients"]["learning_rate"]); axes[1].set_title("learning_rate")
axes[2].plot(ae_logs["coefficients"]["b1"], label="b1")
axes[2].plot(ae_logs["coefficients"]["b2"], label="b2"); axes[2].set_title("β1, β2"); axes[2].legend()
axes[3].plot(ae_logs["signals"]["rho"], lw=0.5, label="ρ")
axes[3].plot(ae_logs["signals"]["V"] / ae_logs["signals"]["V_star"], lw=0.5, label="V / V*")
axes[3].set_title("signals"); axes[3].legend()
fig.tight_layout()

# %% [markdown]
# Knock out a law by rebuilding the chain without it, e.g. the step-size
# law: `ae.ae_adamw(laws_chain=ae.canonical_laws(names,
# hypergradient=False))` with `names = list(ae.coefficients(ae_state))`;
# α then stays at its warm start (1e-3 of the given rate). Opt-in laws are
# added the same way (`resonance=True`, `gauge=True`, ..., docs/laws.md).

# %%
names = list(ae.coefficients(ae_state))
no_step_law = ae.ae_adamw(1e-3, laws_chain=ae.canonical_laws(
    names, hypergradient=False))
_, _, ko_logs = train(no_step_law, params0)
print("without the step-size law: final loss %.4f"
      % ko_logs["loss"][-50:].mean())
