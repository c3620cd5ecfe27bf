"""The controller's state is packed into one buffer per dtype and still
reads, replaces, compares, vmaps and differentiates like a NamedTuple."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae
from ae_jax import _packing as packing


def test_pack_round_trips_a_mixed_tree_with_batch_dimensions():
  tree = {"a": jnp.arange(3.0), "b": (jnp.int32(4), jnp.float32(2.5)),
          "c": jnp.ones((2, 2), jnp.float32)}
  layout, buffers = packing.pack(tree)
  assert layout.groups == ("float32", "int32")
  assert [b.shape for b in buffers] == [(8,), (1,)]
  out = packing.unpack(layout, buffers)
  jax.tree.map(np.testing.assert_array_equal, out, tree)
  # A batch of 5 such trees: the packed axis goes last.
  batched = jax.tree.map(lambda x: jnp.stack([x] * 5), tree)
  layout5, buffers5 = packing.pack(batched, batch_ndim=1)
  assert layout5 == layout
  assert [b.shape for b in buffers5] == [(5, 8), (5, 1)]
  back = packing.unpack(layout5, buffers5)
  jax.tree.map(np.testing.assert_array_equal, back, batched)


def _state():
  tx = ae.ae_adamw(1e-3, smooth=True)  # AE-9's mode, for the gradient
  params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
  return tx, params, tx.init(params)


def test_controller_state_is_two_buffers_and_reads_like_a_namedtuple():
  tx, params, state = _state()
  leaves = jax.tree.leaves(state.controller)
  assert [x.dtype for x in leaves] == [jnp.int32, jnp.float32]
  assert state.controller.z["learning_rate"].shape == ()
  assert int(state.controller.count) == 0
  assert set(state.controller._asdict()) == set(ae.ControllerState._fields)
  moved = state.controller._replace(count=jnp.int32(7))
  assert int(moved.count) == 7 and int(state.controller.count) == 0
  with pytest.raises(ValueError, match="nope"):
    state.controller._replace(nope=1)
  assert "learning_rate" in repr(state.controller.values)


def test_equality_follows_structure_and_dtypes():
  tx, params, state = _state()
  shapes = lambda s: jax.tree.map(lambda x: (x.shape, x.dtype), s)
  assert shapes(state) == shapes(tx.init(params))
  # A different dtype of one field changes the layout, hence equality.
  other = state.controller._replace(energy=jnp.float16(0.0))
  assert shapes(other) != shapes(state.controller)
  # Reprs of non-array leaves do not fail.
  assert "packed_float32" in repr(shapes(state.controller))


def test_replace_in_a_traced_step_writes_only_the_changed_fields():
  tx, params, state = _state()
  ctrl = state.controller
  lr = jnp.float32(0.25)

  def replace(c, lr):
    values = dict(c.values, learning_rate=lr)
    return c._replace(values=type(c.values)(values),
                      signals=c.signals._replace(gamma=2.0 * lr))

  # Traced, the buffers are the old ones with a few entries written in
  # place (dynamic_update_slice), not the whole state packed again: that
  # chain of selects over every field was copied by XLA:CPU into each
  # leaf's update fusion (4 of ae_sgdm's 7 s of compile at 50 leaves).
  jaxpr = str(jax.make_jaxpr(replace)(ctrl, lr))
  assert "dynamic_update_slice" in jaxpr and "select_n" not in jaxpr
  traced = jax.jit(replace)(ctrl, lr)
  eager = replace(ctrl, lr)   # concrete: packed afresh
  jax.tree.map(np.testing.assert_array_equal, traced, eager)
  assert float(traced.values["learning_rate"]) == 0.25
  assert float(traced.signals.gamma) == 0.5
  assert float(traced.z["learning_rate"]) == float(ctrl.z["learning_rate"])
  # A population (batch axis first) and a changed dtype (a new layout,
  # packed afresh) both take the same path as outside jit.
  pop = jax.vmap(tx.init)(jax.tree.map(lambda x: jnp.stack([x] * 3), params))
  lrs = jnp.float32([0.1, 0.2, 0.3])
  out = jax.jit(jax.vmap(replace))(pop.controller, lrs)
  np.testing.assert_array_equal(out.values["learning_rate"], lrs)
  np.testing.assert_array_equal(out.z["learning_rate"],
                                pop.controller.z["learning_rate"])
  half = jax.jit(lambda c: c._replace(energy=jnp.float16(1.0)))(ctrl)
  assert half.energy.dtype == jnp.float16 and float(half.energy) == 1.0


def test_one_update_under_jit_scan_vmap_and_grad():
  tx, params, state = _state()

  def run(lr0, p, s):
    def step(c, _):
      p, s = c
      loss, g = jax.value_and_grad(
          # every leaf has a gradient: Adam's sqrt(ν) at ν = 0 has none
          lambda q: jnp.sum((q["w"] - 2.0) ** 2) + jnp.sum((q["b"] - 1.0) ** 2)
      )(p)
      u, s = tx.update(g, s, p, value=loss)
      return (optax.apply_updates(p, u), s), loss
    (p, s), losses = jax.lax.scan(step, (p, s), None, length=5)
    return losses[-1], s

  loss, s = jax.jit(run)(1e-3, params, state)
  assert int(s.controller.count) == 5
  assert np.isfinite(float(ae.coefficients(s)["learning_rate"]))
  # A population: the controller's buffers carry the member axis first.
  pop = jax.vmap(tx.init)(jax.tree.map(lambda x: jnp.stack([x] * 3), params))
  assert [b.shape[0] for b in jax.tree.leaves(pop.controller)] == [3, 3]
  assert pop.controller.z["learning_rate"].shape == (3,)
  _, pop2 = jax.vmap(lambda p, s: run(1e-3, p, s))(
      jax.tree.map(lambda x: jnp.stack([x] * 3), params), pop)
  np.testing.assert_array_equal(pop2.controller.count, [5, 5, 5])
  # Differentiable through the packed state (AE-9 meta-gradients).
  g = jax.grad(lambda w: run(1e-3, {"w": w, "b": params["b"]}, state)[0])(
      params["w"])
  assert np.all(np.isfinite(np.asarray(g)))
