"""The AE Machine run loop: train until an accept predicate H holds, in one
``jax.lax.while_loop``.

.. code-block:: python

  result = ae.machine.run(loss_fn, params, ae.ae_sgdm(5e-2, momentum=0.0),
                          max_steps=300)
  result.params, result.steps, result.accepted
  result.log["loss"][: result.steps]      # fixed-size buffers, NaN past the end

The predicate sees a :class:`StepInfo` of every step (the loss and gradient
norm measured *before* that step's update, the AE signals and coefficients
after it) and returns a boolean scalar. The run stops at the first step where
it holds.

The reference's predicate (:func:`reference_accept`: loss ≤ ε, or γ ≤ γ_min
with V ≤ v_max) presumes a non-negative objective: on the reference's own
quadratic, whose optimum is −2.1667, it accepts at step 1 (loss 0 at θ = 0,
reference defect 2). The default, :func:`stationary_accept`, asks for a
gradient norm small relative to the first one, which holds at a minimum
whatever its value.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from ae_jax import _controller as controller_lib

# Signals logged every step (from ae.signals) when the optimizer is an AE one.
LOGGED_SIGNALS = ("T", "V", "rho", "S", "gamma")


class StepInfo(NamedTuple):
  """What an accept predicate sees after each step.

  Attributes:
    step: the number of steps taken, this one included (1 after the first).
    loss: the loss at the parameters this step started from.
    gnorm: the gradient norm there.
    first_loss: the loss at the initial parameters.
    first_gnorm: the gradient norm at the initial parameters (both are
      measured by the first step, so no gradient is computed twice).
    signals: ``ae.signals(state)`` after the step (empty for a non-AE
      optimizer).
  """

  step: chex.Array
  loss: chex.Array
  gnorm: chex.Array
  first_loss: chex.Array
  first_gnorm: chex.Array
  signals: dict


Accept = Callable[[StepInfo], chex.Array]


def stationary_accept(rtol: float = 1e-4, atol: float = 0.0) -> Accept:
  """Accepts when ``‖g‖ ≤ rtol·‖g_0‖ + atol``: a stationary point, whatever
  the objective's minimum value (the default).

  Near a minimum with curvature ≥ μ the loss gap is at most ‖g‖²/(2μ).
  """
  def accept(info: StepInfo):
    return info.gnorm <= rtol * info.first_gnorm + atol
  return accept


def progress_accept(rtol: float = 1e-10, patience: int = 5) -> Accept:
  """Accepts when the loss trend has been negligible for ``patience`` steps:
  ``|T| ≤ rtol·(|ℓ_0| + |ℓ|)`` (relative progress; scale-free).

  Needs an AE optimizer (it reads the trend T from the signals); the
  ``patience`` is approximated by requiring the step count to exceed it.
  """
  def accept(info: StepInfo):
    trend = info.signals["T"]
    small = jnp.abs(trend) <= rtol * (jnp.abs(info.first_loss)
                                      + jnp.abs(info.loss))
    return small & (info.step > patience)
  return accept


def reference_accept(eps_loss: float = 1e-3, gamma_min: float = 1e-4,
                     v_max: float = 1e-2) -> Accept:
  """The reference runner's predicate: ``loss ≤ eps_loss`` or
  ``(γ ≤ gamma_min and V ≤ v_max)``.

  Right only for objectives whose minimum is 0 (see the module doc).
  """
  def accept(info: StepInfo):
    return (info.loss <= eps_loss) | ((info.signals["gamma"] <= gamma_min)
                                      & (info.signals["V"] <= v_max))
  return accept


class MachineResult(NamedTuple):
  """The outcome of :func:`run`.

  Attributes:
    params: the final parameters.
    state: the final optimizer state.
    steps: steps taken (≤ ``max_steps``).
    accepted: whether the predicate held (else ``max_steps`` ran out).
    log: per-step buffers of length ``max_steps``: ``loss``, ``gnorm``, the
      signals of :data:`LOGGED_SIGNALS` and every coefficient; entries past
      ``steps`` are NaN.
  """

  params: Any
  state: Any
  steps: chex.Array
  accepted: chex.Array
  log: dict


def _signals_and_coefficients(state):
  try:
    signals = controller_lib.signals(state)
    coefficients = controller_lib.coefficients(state)
  except ValueError:  # not an AE optimizer: nothing to log
    return {}, {}
  return signals, coefficients


def run(loss_fn: Callable[[Any], chex.Array], params, tx, max_steps: int, *,
        accept: Accept | None = None) -> MachineResult:
  """Trains ``params`` with ``tx`` until ``accept`` holds or ``max_steps``.

  The whole loop is one ``jax.lax.while_loop``, so ``run`` jits and vmaps:
  under ``jax.vmap`` over a batch of problems each member stops updating at
  its own accept step (its parameters, state and log freeze), and the loop
  ends when every member has stopped.

  Args:
    loss_fn: ``params -> scalar loss``.
    params: initial parameters.
    tx: an Optax transformation; AE optimizers get ``value=loss``.
    max_steps: step budget (static: it sizes the log buffers).
    accept: the predicate H, default :func:`stationary_accept`.

  Returns:
    A :class:`MachineResult`.
  """
  max_steps = int(max_steps)
  if max_steps < 1:
    raise ValueError(f"run: max_steps must be >= 1, got {max_steps}")
  accept = accept or stationary_accept()
  state = tx.init(params)
  signals0, coefficients0 = _signals_and_coefficients(state)
  is_ae = bool(signals0)
  value_and_grad = jax.value_and_grad(loss_fn)
  loss_dtype = jax.eval_shape(value_and_grad, params)[0].dtype

  logged = {"loss": loss_dtype, "gnorm": loss_dtype}
  logged.update({k: signals0[k].dtype for k in LOGGED_SIGNALS if is_ae})
  logged.update({k: v.dtype for k, v in coefficients0.items()})
  log = {k: jnp.full((max_steps,), jnp.nan, jnp.result_type(d, jnp.float32))
         for k, d in logged.items()}

  def one_step(params, state):
    loss, grads = value_and_grad(params)
    extra = {"value": loss} if is_ae else {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state, loss, \
        optax.tree.norm(grads)

  def cond(carry):
    _, _, step, done, _, _ = carry
    return (step < max_steps) & ~done

  def body(carry):
    params, state, step, done, first, log = carry
    new_params, new_state, loss, gnorm = one_step(params, state)
    # The first step measures at the initial parameters: its loss and
    # gradient norm are the references of the relative predicates.
    first_loss, first_gnorm = jax.tree.map(
        lambda f, x: jnp.where(step == 0, x, f), first, (loss, gnorm))
    signals, coefficients = _signals_and_coefficients(new_state)
    info = StepInfo(step=step + 1, loss=loss, gnorm=gnorm,
                    first_loss=first_loss, first_gnorm=first_gnorm,
                    signals=signals)
    row = {"loss": loss, "gnorm": gnorm}
    row.update({k: signals[k] for k in LOGGED_SIGNALS if is_ae})
    row.update(coefficients)
    new_log = {k: log[k].at[step].set(row[k].astype(log[k].dtype))
               for k in log}
    # Under vmap every member runs the body until all are done: a member
    # that already accepted keeps everything as it was.
    keep = lambda old, new: jax.tree.map(
        lambda o, n: jnp.where(done, o, n), old, new)
    return (keep(params, new_params), keep(state, new_state),
            jnp.where(done, step, step + 1), done | accept(info),
            (first_loss, first_gnorm), keep(log, new_log))

  zero = jnp.zeros([], loss_dtype)
  init = (params, state, jnp.zeros([], jnp.int32), jnp.zeros([], bool),
          (zero, zero), log)
  params, state, steps, accepted, _, log = jax.lax.while_loop(cond, body,
                                                              init)
  return MachineResult(params=params, state=state, steps=steps,
                       accepted=accepted, log=log)


def trajectory_table(result: MachineResult, every: int = 25) -> str:
  """The reference runner's printout: step, L, T, V, ρ, α, μ (or β1), γ, ‖g‖,
  every ``every`` steps and at the first and last step."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  log = {k: np.asarray(v) for k, v in result.log.items()}
  steps = int(result.steps)
  momentum = "momentum" if "momentum" in log else "b1"
  lines = [" step |         L |         T |         V |    rho |     alpha |"
           "    mu |     gamma |     gnorm",
           "------+-----------+-----------+-----------+--------+-----------+"
           "-------+-----------+----------"]
  nan = float("nan")
  for i in range(steps):
    t = i + 1
    if not (t == 1 or t == steps or t % every == 0):
      continue
    get = lambda k: log[k][i] if k in log else nan
    lines.append(
        f"{t:5d} | {get('loss'):9.5f} | {get('T'):9.2e} | {get('V'):9.2e} | "
        f"{get('rho'):6.3f} | {get('learning_rate'):9.3e} | "
        f"{get(momentum):5.3f} | {get('gamma'):9.2e} | {get('gnorm'):9.2e}")
  return "\n".join(lines)


def demo(every: int = 25, max_steps: int = 400) -> dict:
  """``ae-jax machine``: the reference's two machine demos, run with the
  canonical presets, printed as the reference prints them.

  1. the quadratic 0.5 θᵀAθ - bᵀθ, A = diag(3, 1), b = (1, -2), from θ = 0
     with ``ae_sgdm(5e-2, momentum=0)`` until the default predicate holds;
  2. the tape copy task from θ = 0 with ``ae_adam(5e-2)`` for ``max_steps``.

  Returns the two :class:`MachineResult` objects by name.
  """
  from ae_jax import presets, tape  # pylint: disable=g-import-not-at-top

  a = jnp.diag(jnp.array([3.0, 1.0]))
  b = jnp.array([1.0, -2.0])
  optimum = float(-0.5 * b @ jnp.linalg.solve(a, b))
  quadratic = lambda theta: 0.5 * theta @ (a @ theta) - b @ theta
  results = {}
  result = jax.jit(lambda p: run(quadratic, p,
                                 presets.ae_sgdm(5e-2, momentum=0.0),
                                 max_steps))(jnp.zeros(2))
  print("AE machine: quadratic, ae_sgdm(5e-2, momentum=0), default "
        "accept (‖g‖ ≤ 1e-4 ‖g0‖)")
  print(trajectory_table(result, every))
  print(f"accepted={bool(result.accepted)} at step {int(result.steps)}; "
        f"loss {float(quadratic(result.params)):.6f}, optimum {optimum:.6f}, "
        f"gap {float(quadratic(result.params)) - optimum:.2e}\n")
  results["quadratic"] = result

  task = tape.copy_task()
  theta0 = jnp.zeros(task.size)
  never = lambda info: jnp.zeros([], bool)
  result = jax.jit(lambda p: run(task.loss, p, presets.ae_adam(5e-2),
                                 max_steps, accept=never))(theta0)
  print("AE machine: tape copy task (N=8, D=4), ae_adam(5e-2), "
        f"{max_steps} steps")
  print(trajectory_table(result, every * 2))
  recall = task.recall(result.params)
  print(f"loss {float(task.loss(theta0)):.4f} -> "
        f"{float(task.loss(result.params)):.4f}; recall "
        f"{[round(float(x), 4) for x in recall]} vs target "
        f"{[float(x) for x in task.target]}")
  results["copy"] = result
  return results
