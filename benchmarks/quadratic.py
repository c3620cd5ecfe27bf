"""The reference quadratic (defects 1 and 2 of the reference code), measured.

0.5 θᵀAθ − bᵀθ with A = diag(3, 1), b = (1, −2), θ₀ = 0, optimum −2.1667,
float64, 300 steps, from α = 5e-2 and μ = 0 (the reference demo's start):
plain SGD at the fixed α, ``ae.ae_sgdm`` with its defaults, and
``ae.reference_agent`` (the reference AEAgent's laws, α_max = 0.3, auto-γ
warm-up 20). Prints the first step with a loss gap below 1e-6, whether the gap
stays below it through step 300, the final loss and the final α.

  JAX_PLATFORMS=cpu python benchmarks/quadratic.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np
import optax

import ae_jax as ae

A = jnp.diag(jnp.array([3.0, 1.0]))
B = jnp.array([1.0, -2.0])
OPTIMUM = float(-0.5 * B @ jnp.linalg.solve(A, B))


def loss_fn(theta):
  return 0.5 * theta @ (A @ theta) - B @ theta


def run(tx, steps=300):
  def body(carry, _):
    theta, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(theta)
    updates, state = tx.update(grads, state, theta, value=loss)
    theta = optax.apply_updates(theta, updates)
    return (theta, state), loss_fn(theta)

  theta = jnp.zeros(2)
  (theta, state), losses = jax.jit(
      lambda t, s: jax.lax.scan(body, (t, s), None, length=steps))(
          theta, tx.init(theta))
  gaps = np.asarray(losses) - OPTIMUM
  below = gaps < 1e-6
  first = int(np.argmax(below)) + 1 if below.any() else None
  stays = first is not None and bool(below[first - 1:].all())
  return first, stays, float(np.asarray(losses)[-1]), state


def main():
  runs = {
      "optax.sgd(5e-2)": optax.sgd(5e-2),
      "ae.ae_sgdm(5e-2, momentum=0)": ae.ae_sgdm(5e-2, momentum=0.0),
      "ae.reference_agent (reference defaults)": ae.reference_agent(
          init_alpha=5e-2, init_mu=0.0, init_sigma=0.0, sigma_min=0.0,
          sigma_max=0.0, auto_gamma=True, auto_gamma_warmup=20,
          alpha_min=1e-6, alpha_max=0.3),
  }
  print(f"optimum {OPTIMUM:.6f}\n")
  print("| optimizer | first step with gap < 1e-6 | stays through 300 | "
        "loss at 300 | α at 300 |")
  print("| --- | --- | --- | --- | --- |")
  for name, tx in runs.items():
    first, stays, final, state = run(tx)
    try:
      alpha = f"{float(ae.coefficients(state)['learning_rate']):.3g}"
    except ValueError:
      alpha = "5e-2 (fixed)"
    print(f"| {name} | {first if first else 'never'} | {stays} | "
          f"{final:.6f} | {alpha} |")


if __name__ == "__main__":
  main()
