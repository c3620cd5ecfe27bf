"""Robustness: non-finite inputs, absurd starts, invalid configuration,
low precision, unusual pytrees and the noise law."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae

PRESETS = {"ae_sgdm": ae.ae_sgdm, "ae_adam": ae.ae_adam,
           "ae_adamw": ae.ae_adamw}


def _all_finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3),
          "b": jnp.zeros((3,))}


def _grads(scale=0.1):
  return {"w": jnp.full((2, 3), scale, jnp.float32),
          "b": jnp.full((3,), -scale, jnp.float32)}


NAMES = {"ae_sgdm": ["learning_rate", "momentum", "sigma"],
         "ae_adam": ["learning_rate", "b1", "b2", "eps", "sigma"],
         "ae_adamw": ["learning_rate", "b1", "b2", "eps", "weight_decay",
                      "sigma"]}


@functools.lru_cache(maxsize=None)
def _preset(name, hypergradient=True):
  """One optimizer and one jitted update per preset, shared by the tests
  (compiling is most of their cost). Delayed timing: the step that sees a
  bad gradient is applied at the rate set before it, so it can be compared
  with its clean twin; the brake then shows in the next rate (the default
  timing brakes the same step: test_brake_timing covers both).
  ``hypergradient=False``: the default chain without the step-size law, so
  no law moves α and the brake alone sets the next rate."""
  chain = (None if hypergradient else
           ae.canonical_laws(NAMES[name], hypergradient=False))
  tx = PRESETS[name](delayed=True, laws_chain=chain)
  return tx, jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))


# -- non-finite gradients and losses ------------------------------------------


def _zeros_like_grads():
  return jax.tree.map(jnp.zeros_like, _grads())


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("bad", [np.inf, -np.inf], ids=["+inf", "-inf"])
def test_infinite_gradient_entry_skips_the_step_and_brakes(preset, bad):
  # A single ±inf among small entries carries no usable direction: the
  # base receives a zero gradient for the step (as optax.apply_if_finite
  # skips one; not ±1e6, which the un-braked step would apply), the
  # statistics read the entry as 0, and the brake fires. With the default
  # chain the hypergradient moves α in the same step (up to 0.2 in log α),
  # exactly as in the twin whose entry is 0, so the brake shows as α / 10
  # against that twin; without the step-size law no law moves α and the
  # brake shows as α / 10 against the rate before.
  bad_grads = {"w": _grads()["w"].at[0, 1].set(bad), "b": _grads()["b"]}
  zeroed = {"w": _grads()["w"].at[0, 1].set(0.0), "b": _grads()["b"]}
  for hypergradient in (True, False):
    tx, update = _preset(preset, hypergradient)
    params = _params()
    state = tx.init(params)
    _, state = update(_grads(), state, params, 1.0)
    lr_before = ae.coefficients(state)["learning_rate"]
    updates, new_state = update(bad_grads, state, params, 1.0)
    _, ref_state = update(zeroed, state, params, 1.0)
    # Delayed timing: the step applies the coefficients set before it, so
    # the base's update is the one of an all-zero gradient.
    skipped, _ = update(_zeros_like_grads(), state, params, 1.0)
    assert _all_finite(updates)
    assert _all_finite(optax.apply_updates(params, updates))
    chex.assert_trees_all_close(updates, skipped)
    assert ae.signals(new_state)["brake"] == 1.0
    assert ae.signals(ref_state)["brake"] == 0.0
    chex.assert_trees_all_close(
        ae.coefficients(new_state)["learning_rate"],
        0.1 * ae.coefficients(ref_state)["learning_rate"], rtol=0.11)
    if not hypergradient:
      chex.assert_trees_all_close(
          ae.coefficients(new_state)["learning_rate"], 0.1 * lr_before,
          rtol=0.11)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_nan_gradient_entries_skip_the_step(preset):
  tx, update = _preset(preset)
  params = _params()
  state = tx.init(params)
  _, state = update(_grads(), state, params, 1.0)
  nan_grads = {"w": _grads()["w"].at[1, 2].set(np.nan),
               "b": _grads()["b"].at[0].set(np.nan)}
  zeroed = {"w": _grads()["w"].at[1, 2].set(0.0),
            "b": _grads()["b"].at[0].set(0.0)}
  updates, new_state = update(nan_grads, state, params, 1.0)
  _, ref_state = update(zeroed, state, params, 1.0)
  skipped, _ = update(_zeros_like_grads(), state, params, 1.0)
  assert _all_finite(updates) and _all_finite(new_state)
  # The base sees a zero gradient for the step ...
  chex.assert_trees_all_close(updates, skipped)
  # ... and the statistics read the NaN entries as 0: the same measured
  # signals as the twin whose entries are 0, except that NaN entries fire
  # the brake (they mean the step diverged somewhere), which zeros do not.
  nan_signals, ref_signals = ae.signals(new_state), ae.signals(ref_state)
  assert nan_signals.pop("brake") == 1.0 and ref_signals.pop("brake") == 0.0
  for key in ("T", "V", "R", "rho", "S", "gnorm", "gamma"):
    chex.assert_trees_all_close(nan_signals[key], ref_signals[key])
  chex.assert_trees_all_close(
      ae.coefficients(new_state)["learning_rate"],
      0.1 * ae.coefficients(ref_state)["learning_rate"], rtol=0.11)


def test_reference_agent_does_not_brake_on_nan_entries():
  # The reference sanitises NaN to 0 before its test on ‖g‖: no brake.
  tx = ae.reference_agent(init_alpha=1e-2, init_mu=0.0)
  params = _params()
  state = tx.init(params)
  grads = {"w": _grads()["w"].at[1, 2].set(np.nan), "b": _grads()["b"]}
  _, state = tx.update(grads, state, params, value=1.0)
  assert ae.signals(state)["brake"] == 0.0


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("loss", [np.nan, np.inf, -np.inf, 1e9],
                         ids=["nan", "inf", "-inf", "huge"])
def test_nonfinite_loss_brakes(preset, loss):
  tx, update = _preset(preset)
  params = _params()
  state = tx.init(params)
  _, state = update(_grads(), state, params, 1.0)
  # NaN gradient entries alongside the bad loss, as a diverged step gives.
  grads = {"w": _grads()["w"].at[0, 0].set(np.nan), "b": _grads()["b"]}
  updates, state = update(grads, state, params, loss)
  params = optax.apply_updates(params, updates)
  assert _all_finite(params)
  assert _all_finite(ae.signals(state))
  assert _all_finite(ae.coefficients(state))
  assert ae.signals(state)["brake"] == 1.0
  # The filters recover: a few good steps later the brake is off.
  for _ in range(3):
    updates, state = update(_grads(), state, params, 1.0)
  assert ae.signals(state)["brake"] == 0.0
  assert _all_finite(state)


@functools.lru_cache(maxsize=None)
def _plain_sgd_ae(delayed):
  """AE around SGD without momentum, so ``updates == -α g`` exactly."""
  # Without the step-size law (hypergradient=False): on these repeated
  # gradients it would raise α by up to 0.2 in log a step and hide the
  # brake's α / 10 in the rates compared below.
  inner = ae.injected(optax.sgd, learning_rate=0.1)
  tx = ae.adapt(inner, [ae.Coefficient("learning_rate", 0.1, 1e-4, 1.0)],
                ae.canonical_laws(["learning_rate"], hypergradient=False),
                delayed=delayed)
  return tx, jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))


def test_a_gradient_beyond_the_overflow_bound_is_scaled_as_a_whole():
  # Without the clip (plain ``adapt``), the base sees the gradient scaled
  # by bound / peak: its largest entry at the bound and its direction kept
  # (entry-by-entry cleaning zeroed the three large entries and kept 0.5).
  from ae_jax import _adapt  # pylint: disable=import-outside-toplevel
  tx, update = _plain_sgd_ae(True)
  params = {"w": jnp.ones((4,))}
  state = tx.init(params)
  _, state = update({"w": jnp.full((4,), 0.1)}, state, params, 1.0)
  rate = ae.coefficients(state)["learning_rate"]
  grads = {"w": jnp.array([1e30, 2e30, -1e30, 0.5], jnp.float32)}
  bound = _adapt._overflow_bound(grads, jnp.float32)
  updates, _ = update(grads, state, params, 1.0)
  expected = -rate * (bound / 2e30) * np.asarray(grads["w"], np.float64)
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)


@pytest.mark.parametrize("delayed", [True, False])
@pytest.mark.parametrize("trigger", ["loss", "grad"])
def test_brake_timing(delayed, trigger):
  """delayed=True: the brake cuts the rate of the next step; delayed=False:
  the rate of the step that fired it."""
  tx, update = _plain_sgd_ae(delayed)
  params = {"w": jnp.ones((4,))}
  grads = {"w": jnp.array([0.5, -0.25, 1.0, 2.0])}
  state = tx.init(params)

  def applied_rate(updates, g):
    return -updates["w"][0] / g["w"][0]  # entry 0 is always finite

  for _ in range(3):
    updates, state = update(grads, state, params, 1.0)
  rate_before = applied_rate(updates, grads)
  if trigger == "loss":
    bad_grads, bad_loss = grads, np.nan
  else:
    bad_grads, bad_loss = {"w": grads["w"].at[3].set(np.inf)}, 1.0
  updates, state = update(bad_grads, state, params, bad_loss)
  assert ae.signals(state)["brake"] == 1.0
  if trigger == "grad":
    # A gradient with an unusable entry reaches the base as zeros: plain
    # SGD applies nothing, at either timing.
    np.testing.assert_array_equal(updates["w"], 0.0)
  else:
    rate_bad = applied_rate(updates, bad_grads)
    np.testing.assert_allclose(
        rate_bad, rate_before if delayed else 0.1 * rate_before, rtol=0.11)
  updates, state = update(grads, state, params, 1.0)
  assert ae.signals(state)["brake"] == 0.0
  rate_next = applied_rate(updates, grads)
  # Between good steps no law of this chain drives α (only the barrier,
  # ~0 inside Ω): the ratio is the brake's, cut at the bad step (delayed:
  # from the next one) and kept.
  np.testing.assert_allclose(rate_next, 0.1 * rate_before, rtol=0.23)
  assert rate_next < 0.2 * rate_before


# -- absurd start -------------------------------------------------------------


def _mlp_problem():
  kx, kw, kp = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (128, 4))
  y = jnp.sin(x @ jnp.array([1.0, -0.5, 0.3, 0.8]))[:, None]
  sizes = [4, 32, 32, 1]
  keys = jax.random.split(kp, 3)
  params = [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a),
             "b": jnp.zeros((b,))}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

  def loss_fn(p):
    h = x
    for layer in p[:-1]:
      h = jnp.tanh(h @ layer["w"] + layer["b"])
    out = h @ p[-1]["w"] + p[-1]["b"]
    return jnp.mean(jnp.square(out - y))

  return params, loss_fn


def _scan_train(tx, loss_fn, params, steps, record):
  """``steps`` steps of ``tx`` on ``loss_fn`` in one jitted lax.scan;
  ``record(loss, updates, params, state)`` is stacked per step."""
  def step(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p, value=loss)
    p = optax.apply_updates(p, u)
    return (p, s), record(loss, u, p, s)

  return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None,
                                        length=steps))(params)


def _train(tx, params, loss_fn, steps, read_lr):
  (params, _), trace = _scan_train(
      tx, loss_fn, params, steps,
      lambda loss, u, p, s: (loss, _all_finite_traced(p), read_lr(s)))
  return loss_fn(params), trace


def _all_finite_traced(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


def test_absurd_learning_rate_stays_finite():
  params, loss_fn = _mlp_problem()
  steps = 300
  read_lr = lambda s: ae.coefficients(s)["learning_rate"]
  # α starts at the absurd rate itself (warm_start=1.0; the default starts
  # at 1e-3 of it, see below), inside the Ω the presets had before the
  # self-tuning redesign, (1e-3, 10) x the rate (now 1e-6 to 1e4).
  final, (losses, finite, lrs) = _train(
      ae.ae_adam(learning_rate=1.0, warm_start=1.0,
                 learning_rate_bounds=(1e-3, 10.0)),
      params, loss_fn, steps, read_lr)
  initial = float(losses[0])
  # Seen (CPU, float32, 2026-12-02): loss 1.67 -> 508 at step 2, final
  # 0.043; the hypergradient takes α from 1 to 0.25 by step 50 (before it,
  # the drive kept α ≈ 1.0-1.3 over the first 100 steps: the failing
  # hyper-cliff prediction of benchmarks/RESULTS.md). Where α goes later
  # depends on float rounding, so only what the library guarantees is
  # asserted.
  assert bool(jnp.all(finite))
  assert float(losses.max()) > 10 * initial  # the start really is absurd
  assert float(final) < initial              # and it ends below the start
  assert float(lrs.max()) <= 10.0 * (1 + 1e-5)  # Ω's ceiling holds
  # The default warm start (α₀ = 1e-3 x the rate) never takes the absurd
  # step: seen max loss = the initial loss, final 5e-4.
  tx = ae.ae_adam(learning_rate=1.0)
  assert float(ae.coefficients(tx.init(params))["learning_rate"]) == (
      pytest.approx(1e-3, rel=1e-5))
  final, (losses, finite, lrs) = _train(tx, params, loss_fn, steps, read_lr)
  assert bool(jnp.all(finite))
  assert float(losses.max()) <= initial * (1 + 1e-6)
  assert float(final) < 0.1 * initial


def test_safety_law_drives_an_absurd_rate_down():
  # With the optional AE-10 safety law α falls while the filtered loss sits
  # above its best: seen α(step 50) = 0.085-0.090 on six variants of this
  # problem (data and init keys 0-5), final loss 0.04 here, with the chain
  # the presets had before the self-tuning redesign, pinned here: α starts
  # at the rate (warm_start=1.0), the drive, coupling, trust region (budget)
  # and resonance laws on and the hypergradient off, so the fall is the
  # safety law's (seen since: α(step 50) = 0.095, final loss 0.08).
  params, loss_fn = _mlp_problem()
  names = NAMES["ae_adam"]
  tx = ae.ae_adam(1.0, warm_start=1.0,
                  laws_chain=ae.canonical_laws(names, drive=True,
                                               coupling=True, budget=True,
                                               resonance=True,
                                               hypergradient=False,
                                               safety=True))
  final, (losses, finite, lrs) = _train(
      tx, params, loss_fn, 300, lambda s: ae.coefficients(s)["learning_rate"])
  initial = float(losses[0])
  assert bool(jnp.all(finite))
  assert float(losses.max()) > 10 * initial
  assert float(lrs[50]) < 0.15               # α driven down ~10x by step 50
  # and training recovered (final 0.04-0.48 of the initial loss across law
  # and statistics revisions: the trajectory after the blow-up is chaotic,
  # so this asserts recovery, not its digits)
  assert float(final) < 0.6 * initial


# -- invalid configuration ----------------------------------------------------

_LAWS = ae.canonical_laws(["learning_rate"])


def _adam_inner():
  return optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)


@pytest.mark.parametrize("build, match", [
    (lambda: ae.Coefficient("learning_rate", 1e-3, lower=1.0, upper=0.1),
     r"'learning_rate'.*reversed"),
    (lambda: ae.Coefficient("learning_rate", 1e-3, lower=1e-2, upper=1.0),
     r"'learning_rate'.*init"),
    (lambda: ae.Coefficient("b1", 0.9, 0.0, 1.0, param="probit"), "param"),
    (lambda: ae.ae_adamw(learning_rate=0), "learning_rate"),
    (lambda: ae.ae_adamw(learning_rate=-1), "learning_rate"),
    (lambda: ae.ae_adam(learning_rate=0.0), "learning_rate"),
    (lambda: ae.ae_sgdm(learning_rate=-1e-2), "learning_rate"),
    (lambda: ae.ae_adamw(eps=0), "eps"),
    (lambda: ae.ae_adamw(b1=1.0), "b1"),
    (lambda: ae.ae_adamw(b2=0.0), "b2"),
    (lambda: ae.ae_adamw(weight_decay=-1e-4), "weight_decay"),
    (lambda: ae.ae_sgdm(momentum=1.5), "momentum"),
    (lambda: ae.adapt(_adam_inner(), ["momentum"], _LAWS), "momentum"),
    (lambda: ae.adapt(optax.adam(1e-3), ["learning_rate"], _LAWS),
     "inject_hyperparams"),
    (lambda: ae.adapt(_adam_inner(), ["learning_rate"],
                      ae.canonical_laws(["learning_rate", "b1"])), "b1"),
    (lambda: ae.adapt(_adam_inner(), ["learning_rate"],
                      ae.laws.evolve({"b2": 0.01})), "b2"),
    (lambda: ae.adapt(_adam_inner(), ["learning_rate"], _LAWS,
                      filters=ae.FilterConfig(trend=1.5)),
     r"FilterConfig\.trend"),
    (lambda: ae.adapt(_adam_inner(), ["learning_rate"], _LAWS,
                      filters=ae.FilterConfig(variance=-0.1)),
     r"FilterConfig\.variance"),
    (lambda: ae.adapt(_adam_inner(), ["learning_rate"], _LAWS,
                      filters=ae.FilterConfig(mode="fast")),
     r"FilterConfig\.mode"),
    (lambda: ae.adapt(_adam_inner(), ["learning_rate"], _LAWS,
                      brake=ae.Brake(scale={"lr": 0.1})),
     r"Brake\.scale.*'lr'"),
    (lambda: ae.adapt(_adam_inner(), ["learning_rate"], _LAWS,
                      brake=ae.Brake(cap={"b1": 0.5})), r"Brake\.cap.*'b1'"),
    (lambda: ae.adapt(_adam_inner(), ["learning_rate"], _LAWS,
                      brake=ae.Brake(scale={"learning_rate": 2.0})),
     r"Brake\.scale\['learning_rate'\]"),
    (lambda: ae.adapt(_adam_inner(), ["learning_rate", "learning_rate"],
                      _LAWS), "unique"),
], ids=["reversed_bounds", "init_outside", "param", "lr_zero", "lr_negative",
        "adam_lr_zero", "sgdm_lr_negative", "eps_zero", "b1_one", "b2_zero",
        "wd_negative", "momentum_outside", "unknown_hyperparam", "not_injected",
        "law_unknown_coefficient", "evolve_unknown_coefficient",
        "filter_trend", "filter_variance", "filter_mode", "brake_scale_name",
        "brake_cap_name", "brake_scale_range", "duplicate_names"])
def test_invalid_configuration_raises(build, match):
  with pytest.raises(ValueError, match=match):
    build()


# -- bfloat16 -----------------------------------------------------------------


def test_bfloat16_params_keep_float32_controller_and_fixed_state_dtypes():
  params = {"w": jnp.linspace(-1, 1, 12, dtype=jnp.bfloat16).reshape(4, 3),
            "b": jnp.zeros((3,), jnp.bfloat16)}
  target = jnp.ones((4, 3), jnp.bfloat16)
  tx = ae.ae_adamw(1e-2)

  def loss_fn(p):
    return jnp.mean(jnp.square(p["w"] + p["b"] - target).astype(jnp.float32))

  state = tx.init(params)
  dtypes0 = jax.tree.map(lambda x: x.dtype, state)

  def step(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p, value=loss)
    return (optax.apply_updates(p, u), s), loss

  # A lax.scan carry fails to trace if any state dtype changes in update.
  # 60 steps: from the warm start (1e-5) α needs ~35 steps to reach a rate
  # whose steps bfloat16 parameters can resolve.
  (params, state), losses = jax.jit(
      lambda c: jax.lax.scan(step, c, None, length=60))((params, state))
  assert jax.tree.map(lambda x: x.dtype, state) == dtypes0
  assert float(losses[-1]) < float(losses[0])

  controller = [x for x in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, ae.ControllerState))
                if isinstance(x, ae.ControllerState)]
  assert len(controller) == 1
  for leaf in jax.tree.leaves(controller[0]):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  for value in list(ae.coefficients(state).values()) + list(
      ae.signals(state).values()):
    assert value.dtype == jnp.float32
  hps = state.inner_state.hyperparams
  for value in hps.values():
    assert value.dtype == jnp.float32
  assert 0.9 <= float(hps["b2"]) < 1.0  # 0.999 would round to 1 in bfloat16
  assert float(jnp.asarray(0.999, jnp.bfloat16)) == 1.0
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.bfloat16
  assert _all_finite(params)


@pytest.mark.parametrize("preset", ["ae_sgdm", "ae_adam"])
def test_bfloat16_state_dtypes_fixed(preset):
  tx = PRESETS[preset]()
  params = {"w": jnp.ones((5,), jnp.bfloat16)}
  state = tx.init(params)
  _, new_state = jax.jit(lambda s: tx.update(
      {"w": jnp.full((5,), 0.5, jnp.bfloat16)}, s, params, value=1.0))(state)
  chex.assert_trees_all_equal_dtypes(new_state, state)


# -- unusual pytrees ----------------------------------------------------------


@pytest.mark.parametrize("preset", ["ae_sgdm", "ae_adamw"])
def test_scalar_parameter(preset):
  tx = PRESETS[preset]()
  loss_fn = lambda p: jnp.square(p - 3.0)
  (params, state), losses = _scan_train(
      tx, loss_fn, jnp.asarray(0.0), 30, lambda loss, u, p, s: loss)
  assert params.shape == () and bool(jnp.isfinite(params))
  assert float(losses[-1]) < float(losses[0])
  assert _all_finite(ae.signals(state))


def test_many_leaves():
  tx = ae.ae_adamw(1e-2)
  params = {f"p{i:02d}": jnp.full((i % 4 + 1, 2), 0.1 * i, jnp.float32)
            for i in range(50)}
  loss_fn = lambda p: sum(jnp.sum(jnp.square(x - 1.0))
                          for x in jax.tree.leaves(p))

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = tx.update(g, s, p, value=loss)
    return optax.apply_updates(p, u), s, u, g

  state = tx.init(params)
  loss0 = loss_fn(params)
  for _ in range(5):
    params, state, updates, grads = step(params, state)
  chex.assert_trees_all_equal_shapes(updates, params)
  assert len(jax.tree.leaves(updates)) == 50
  assert _all_finite(params)
  assert float(loss_fn(params)) < float(loss0)
  # ‖g‖ is the global norm over all 50 leaves.
  np.testing.assert_allclose(ae.signals(state)["gnorm"],
                             optax.tree.norm(grads), rtol=1e-5)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_empty_pytree(preset):
  tx = PRESETS[preset]()
  state = tx.init({})
  update = jax.jit(lambda s, v: tx.update({}, s, {}, value=v))
  for loss in (1.0, 0.9, 0.8):
    updates, state = update(state, loss)
  assert updates == {}
  assert _all_finite(ae.signals(state))
  assert _all_finite(ae.coefficients(state))
  assert float(ae.signals(state)["loss"]) == pytest.approx(0.8)
  assert float(ae.signals(state)["gnorm"]) < 1e-6


# -- noise law ----------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _noisy_run(sigma, seed, steps=5):
  # Delayed timing: the first step runs at exactly the initial α and β; the
  # 1e-3 warm start keeps that step inside the travel cap's first radius.
  tx = ae.ae_sgdm(1e-2, sigma=sigma, seed=seed, delayed=True,
                  warm_start=1e-3)
  params = {"w": jnp.zeros((64,)), "b": jnp.zeros((3,))}
  loss_fn = lambda p: jnp.sum(jnp.square(p["w"] - 1.0)) + jnp.sum(
      jnp.square(p["b"]))

  (params, state), updates = _scan_train(tx, loss_fn, params, steps,
                                         lambda loss, u, p, s: u)
  return params, state, updates


def test_noise_depends_on_seed():
  a, state, _ = _noisy_run(1e-3, seed=0)
  b, _, _ = _noisy_run(1e-3, seed=1)
  a2, _, _ = _noisy_run(1e-3, seed=0)
  chex.assert_trees_all_equal(a, a2)  # same seed: bit-identical
  assert not np.allclose(a["w"], b["w"], rtol=0, atol=1e-6)
  assert float(ae.coefficients(state)["sigma"]) > 0


def test_noise_magnitude_is_sigma():
  sigma = 1e-3
  _, _, noisy = _noisy_run(sigma, seed=0)
  _, _, clean = _noisy_run(0.0, seed=0)
  xi = noisy["w"][0] - clean["w"][0]  # the first step: same α and β
  assert 0.5 * sigma < float(jnp.std(xi)) < 2 * sigma
  # Without noise the first step is exactly -α (1 - β) g of EMA-SGD, at the
  # warm start α = 1e-3 x 1e-2.
  g = 2.0 * (0.0 - 1.0)
  np.testing.assert_allclose(clean["w"][0], -1e-3 * 1e-2 * 0.1 * g,
                             rtol=1e-6)


def test_zero_sigma_is_deterministic_and_noiseless():
  a, state, ua = _noisy_run(0.0, seed=0)
  b, _, ub = _noisy_run(0.0, seed=123)
  chex.assert_trees_all_equal(a, b)
  chex.assert_trees_all_equal(ua, ub)
  assert float(ae.coefficients(state)["sigma"]) == 0.0
  # Every entry of w sees the same gradient, so without noise the entries
  # stay exactly equal.
  assert bool(jnp.all(a["w"] == a["w"][0]))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_bf16_updates_keep_the_parameters_dtype(preset):
  params = {"w": jnp.ones((4,), jnp.bfloat16)}
  tx = PRESETS[preset]()
  updates, _ = tx.update(params, tx.init(params), params, value=1.0)
  assert updates["w"].dtype == jnp.bfloat16
