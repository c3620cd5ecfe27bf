"""What an Optax user does without thinking: checkpoints, state access,
overflowing gradients, traced and scheduled rates, sharding, validation."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae

PRESETS = {"ae_sgdm": ae.ae_sgdm, "ae_adam": ae.ae_adam,
           "ae_adamw": ae.ae_adamw}


def _problem(big=300):
  """A tanh regression with a leaf above the sampled-statistics threshold
  (``big``² > 65,536) beside small ones."""
  key = jax.random.PRNGKey(0)
  params = {"w": jax.random.normal(key, (big, big)) * 0.01,
            "b": jnp.zeros(big), "c": jnp.zeros((4, 5))}
  x = jax.random.normal(jax.random.PRNGKey(1), (16, big))

  def loss(p):
    h = jnp.tanh(x @ p["w"] + p["b"])
    return jnp.mean((h - 0.5) ** 2) + jnp.sum((p["c"] - 1.0) ** 2)

  return params, loss


def _stepper(tx, loss):
  @jax.jit
  def step(params, state, i):
    del i  # the step index, kept so every caller's loop reads the same
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params, value=value)
    return optax.apply_updates(params, updates), state

  return step


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact))


# -- checkpoints ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_orbax_round_trip_resumes_bit_identically(name, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  params, loss = _problem()
  assert sum(x.size for x in jax.tree.leaves(params)) > 65_536
  tx = PRESETS[name]()
  step = _stepper(tx, loss)
  state = tx.init(params)
  for i in range(3):
    params, state = step(params, state, i)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", (params, state))
  checkpointer.wait_until_finished()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, (params, state))
  r_params, r_state = checkpointer.restore(tmp_path / "ckpt", target)
  assert jax.tree.structure(r_state) == jax.tree.structure(state)
  for i in range(3, 6):
    params, state = step(params, state, i)
    r_params, r_state = step(r_params, r_state, i)
  for a, b in zip(jax.tree.leaves((params, state)),
                  jax.tree.leaves((r_params, r_state))):
    np.testing.assert_array_equal(a, b)


def test_orbax_round_trip_through_nnx_state_resumes_bit_identically(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  nnx = pytest.importorskip("flax.nnx")
  x = jnp.ones((4, 300))
  loss_fn = lambda m: jnp.mean((m(x) - 1.0) ** 2)

  def build(seed):
    model = nnx.Linear(300, 300, rngs=nnx.Rngs(seed))  # 90,300 parameters
    return model, nnx.Optimizer(model, ae.ae_adamw(), wrt=nnx.Param)

  def train(model, optimizer, steps):
    for _ in range(steps):
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads, value=loss)

  model, optimizer = build(0)
  train(model, optimizer, 3)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "nnx", nnx.state((model, optimizer)))
  checkpointer.wait_until_finished()
  model2, optimizer2 = build(1)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          nnx.state((model2, optimizer2)))
  nnx.update((model2, optimizer2),
             checkpointer.restore(tmp_path / "nnx", abstract))
  train(model, optimizer, 3)
  train(model2, optimizer2, 3)
  for a, b in zip(jax.tree.leaves(nnx.state((model, optimizer))),
                  jax.tree.leaves(nnx.state((model2, optimizer2)))):
    np.testing.assert_array_equal(a, b)


# -- overflow --------------------------------------------------------------------


@pytest.mark.parametrize("size", [1e19, 3e38])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_no_finite_gradient_makes_anything_nan(name, size,
                                               default_optimization):
  params, loss = _problem(big=40)
  # A huge leaf of tiny gradients beside the absurd ones.
  params["huge"] = jnp.zeros(50_000)
  tx = PRESETS[name](sigma=1e-4)

  # One compiled program serves the three runs: the spike's step and size
  # and the number of steps are traced (step -1: no spike). It runs 630
  # steps over 50,000 elements, so it asks LLVM for its default
  # optimization, which the suite otherwise turns off to compile faster
  # (tests/conftest.py): ae_sgdm's run took 50 s instead of 5 s at level 0.
  @functools.partial(jax.jit, compiler_options=default_optimization)
  def run(at, spike, steps):
    def body(i, carry):
      p, s = carry
      value, grads = jax.value_and_grad(loss)(p)
      grads = jax.tree.map(
          lambda g: jnp.where(i == at, jnp.full_like(g, spike), g), grads)
      updates, s = tx.update(grads, s, p, value=value)
      return optax.apply_updates(p, updates), s

    return jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))

  results = {}
  for label, at, steps in (("clean", -1, 300), ("spiked", 100, 300),
                           ("first", 0, 30)):
    p, s = run(at, jnp.float32(size), steps)
    assert _finite((p, s)), label
    results[label] = float(loss(p))
  # Mid-run, the spike is clipped to the running norm and read as one
  # reversal by the step-size law: it costs little. (During α's warm-up
  # climb it costs more: see the fault notes in docs/laws.md.)
  assert results["spiked"] <= 1.5 * results["clean"] + 1e-6


# -- state access --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_optax_tree_get_and_set_reach_the_rate(name):
  params, loss = _problem(big=8)
  tx = PRESETS[name]()
  step = _stepper(tx, loss)
  state = tx.init(params)
  for i in range(5):
    params, state = step(params, state, i)
  rate = optax.tree.get(state, "learning_rate")  # exactly one match
  np.testing.assert_allclose(rate, ae.coefficients(state)["learning_rate"],
                             rtol=1e-6)
  state = optax.tree.set(state, learning_rate=jnp.asarray(3e-4, rate.dtype))
  params, state = step(params, state, 5)
  # The controller adopted the override; one law step moves it by at most
  # e^{κ_max} (0.2 in log α).
  now = float(ae.coefficients(state)["learning_rate"])
  assert 3e-4 * np.exp(-0.21) <= now <= 3e-4 * np.exp(0.21)
  assert float(optax.tree.get(state, "learning_rate")) == pytest.approx(
      now, rel=1e-6)


def test_set_coefficients_inside_jit_and_refuses_unknown_names():
  params, loss = _problem(big=8)
  tx = ae.ae_sgdm()
  state = tx.init(params)
  state = jax.jit(lambda s: ae.set_coefficients(s, momentum=0.5))(state)
  params, state = _stepper(tx, loss)(params, state, 0)
  assert float(ae.coefficients(state)["momentum"]) == pytest.approx(0.5,
                                                                    abs=0.02)
  with pytest.raises(ValueError, match="sigma"):
    ae.set_coefficients(state, sigma=1e-3)
  with pytest.raises(ValueError, match="nonexistent"):
    ae.set_coefficients(state, nonexistent=1.0)


def test_several_ae_parts_are_read_by_path_or_refused():
  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  tx = optax.multi_transform({"x": ae.ae_adamw(), "y": ae.ae_sgdm()},
                             {"a": "x", "b": "y"})
  state = tx.init(params)
  with pytest.raises(ValueError, match="by_path"):
    ae.coefficients(state)
  with pytest.raises(ValueError, match="by_path"):
    ae.signals(state)
  parts = ae.coefficients(state, by_path=True)
  assert len(parts) == 2
  assert sorted(len(v) for v in parts.values()) == [3, 6]
  assert len(ae.signals(state, by_path=True)) == 2


# -- traced and scheduled rates -------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_vmap_over_initial_rates_equals_separate_optimizers(name):
  params, loss = _problem(big=6)
  rates = [1e-3, 1e-2, 1e-1]

  def run(rate):
    tx = PRESETS[name](learning_rate=rate)
    # A loop, not 8 unrolled steps: one step to compile.
    step = lambda _, carry: _raw_step(tx, loss, *carry)
    return jax.lax.fori_loop(0, 8, step, (params, tx.init(params)))[0]

  vmapped = jax.jit(jax.vmap(run))(jnp.asarray(rates))
  for k, rate in enumerate(rates):
    tx = PRESETS[name](learning_rate=rate)  # a Python float: no scaling
    step = _stepper(tx, loss)
    p, s = params, tx.init(params)
    for i in range(8):
      p, s = step(p, s, i)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(vmapped)):
      np.testing.assert_allclose(a, b[k], rtol=2e-4, atol=1e-6)


def _raw_step(tx, loss, params, state):
  value, grads = jax.value_and_grad(loss)(params)
  updates, state = tx.update(grads, state, params, value=value)
  return optax.apply_updates(params, updates), state


def test_schedule_is_the_shape_the_closed_loop_modulates():
  params, loss = _problem(big=6)
  schedule = optax.linear_schedule(1e-2, 1e-3, 10)
  scheduled = ae.ae_adamw(schedule, warm_start=1.0,
                          laws_chain=optax.identity())
  # With the laws off, the scheduled preset applies exactly s(t).
  reference = optax.adamw(schedule, weight_decay=1e-4)
  p1, s1 = params, scheduled.init(params)
  p2, s2 = params, reference.init(params)
  for _ in range(12):
    p1, s1 = _raw_step(scheduled, loss, p1, s1)
    value, grads = jax.value_and_grad(loss)(p2)
    updates, s2 = reference.update(grads, s2, p2)
    p2 = optax.apply_updates(p2, updates)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# -- validation -----------------------------------------------------------------


@pytest.mark.parametrize("make, match", [
    (lambda: ae.ae_sgdm(momentum_bounds=(0.0, 1.5)), "momentum_bounds"),
    (lambda: ae.ae_sgdm(momentum_bounds=(0.5,)), "momentum_bounds"),
    (lambda: ae.ae_adamw(learning_rate="1e-3"), "learning_rate"),
    (lambda: ae.ae_adam(b1="0.9"), "b1"),
    (lambda: ae.ae_adamw(weight_decay_bounds=(-1.0, 1.0)),
     "weight_decay_bounds"),
    (lambda: ae.ae_adam(learning_rate_bounds=(0.0, 1.0)),
     "learning_rate_bounds"),
    (lambda: ae.ae_sgdm(learning_rate=-1.0), "learning_rate"),
    (lambda: ae.ae_adamw(learning_rate=lambda t: -1.0 + 0 * t),
     "learning_rate"),
    (lambda: ae.canonical_laws(["learning_rate", "foo"]), "foo"),
    (lambda: ae.adapt(ae.injected(optax.sgd, learning_rate=0.1),
                      ["learning_rate"], ae.canonical_laws(["learning_rate"]),
                      step_size="nonexistent"), "step_size"),
])
def test_bad_configuration_is_refused_naming_the_field(make, match):
  with pytest.raises((ValueError, TypeError), match=match):
    make()


# -- sharding --------------------------------------------------------------------

_SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                               + os.environ.get("XLA_FLAGS", ""))
    import jax, jax.numpy as jnp, numpy as np, optax, ae_jax as ae
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    key = jax.random.PRNGKey(0)
    params = {"w": jax.random.normal(key, (512, 256)) * 0.05,
              "b": jnp.zeros(256), "v": jnp.zeros((8, 8))}
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 512))
    y = jnp.sin(x[:, :256])

    def loss(p, x, y):
      return jnp.mean((jnp.tanh(x @ p["w"] + p["b"]) - y) ** 2) + jnp.sum(
          (p["v"] - 1) ** 2)

    def train(tx, params, x, y, steps=5):
      state = tx.init(params)

      @jax.jit
      def step(p, s):
        value, grads = jax.value_and_grad(loss)(p, x, y)
        updates, s = tx.update(grads, s, p, value=value)
        return optax.apply_updates(p, updates), s

      for _ in range(steps):
        params, state = step(params, state)
      return params, state

    # ae_adam is ae_adamw's code path without the decay: two presets cover
    # both statistics references (momentum, Adam's preconditioned step).
    for name in ("ae_sgdm", "ae_adamw"):
      tx = getattr(ae, name)()
      single, _ = train(tx, params, x, y)
      # (parameter spec, data spec): parameters sharded (model-parallel
      # columns), and data-parallel with replicated parameters.
      layouts = [({"w": P(None, "data"), "b": P("data"), "v": P()}, P()),
                 ({"w": P(), "b": P(), "v": P()}, P("data"))]
      # Auto axes take the same code path for both presets: one suffices.
      kinds = (AxisType.Explicit, AxisType.Auto) if name == "ae_adamw" else (
          AxisType.Explicit,)
      for kind in kinds:
        mesh = jax.make_mesh((8,), ("data",), axis_types=(kind,))
        for spec, data in layouts:
         with jax.set_mesh(mesh):
          sharded = jax.tree.map(
              lambda a, s: jax.device_put(a, NamedSharding(mesh, s)),
              params, spec)
          xs = jax.device_put(x, NamedSharding(mesh, data))
          ys = jax.device_put(y, NamedSharding(mesh, data))
          out, state = train(tx, sharded, xs, ys)
          # Parameter-shaped state keeps the parameters' sharding.
          mu = optax.tree.get(state, "mu") if name != "ae_sgdm" else (
              optax.tree.get(state, "ema"))
          assert mu["w"].sharding.is_equivalent_to(
              sharded["w"].sharding, 2), (kind, mu["w"].sharding)
          for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(out)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                       rtol=1e-4, atol=1e-6)
    print("SHARDED-OK")
""")


def test_sharded_data_parallel_run_equals_single_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _SHARDED], env=env,
                          capture_output=True, text=True, timeout=600)
  assert "SHARDED-OK" in result.stdout, result.stderr[-3000:]
