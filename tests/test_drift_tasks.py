"""The drifting harness tasks (drift_regression, drift_digits,
drift_classes), the held-out resnet_digits, and the drift metrics
(time_to_recover, regret) on hand-made curves."""

import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from ae_jax.bench import metrics as M
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T

KEY = jax.random.PRNGKey(3)
NEW_TASKS = {"drift_regression", "drift_digits", "drift_classes",
             "resnet_digits"}


def _per_step(task, params, f, n):
  """``f(params, task.batch(KEY, t))`` for t = 0..n-1, in one compiled
  vmap over the steps."""
  return np.asarray(jax.jit(jax.vmap(
      lambda t: f(params, task.batch(KEY, t))))(jnp.arange(n)))


def _per_eval(f, params, n):
  """``f(params, s)`` for s = 0..n-1 (one compiled vmap)."""
  return np.asarray(jax.jit(jax.vmap(lambda s: f(params, s)))(
      jnp.arange(n)))


def _blocks(values, period, phases, n_steps):
  """Asserts ``values[t]`` (t = 0..n_steps-1) is constant inside every
  phase, changes at every switch and repeats when the phases cycle."""
  values = np.asarray(values)
  for t in range(1, n_steps):
    same_phase = (t // period) % phases == ((t - 1) // period) % phases
    if same_phase:
      assert values[t] == values[t - 1], t
    else:
      assert values[t] != values[t - 1], t
    if t >= period * phases:
      assert values[t] == values[t - period * phases], t


def test_registry_lists_the_new_tasks_and_static_tasks_have_no_drift():
  assert NEW_TASKS <= set(T.names())
  static = T.get("quadratic", dim=4, steps=20, eval_every=10)
  assert static.switch_every is None and static.metric_at is None
  assert static.eval_loss_at is None
  d = T.get("drift_regression", period=7, phases=2, n_train=8, n_test=8)
  assert d.switch_every == 7 and d.steps == 14 and d.name.endswith("_p7")
  assert T.get("drift_classes").steps == 2000  # 5 phases of 400
  # scaled keeps the step-aware metric (the metric is not scaled)
  assert T.scaled(d, 10.0).metric_at is d.metric_at


# ---- the phase switches exactly at multiples of the period -------------------

def test_drift_regression_switches_at_multiples_of_the_period():
  # one training example: every batch is that example, so the loss of fixed
  # parameters depends on the step only through the phase
  task = T.get("drift_regression", period=5, phases=3, n_train=1, n_test=16,
               hidden=4)
  params = jax.jit(task.init)(KEY)
  losses = _per_step(task, params, task.loss, 20)
  _blocks(losses, 5, 3, 20)
  # the evaluation after s steps measures the phase of step s - 1
  evals = list(_per_eval(task.metric_at, params, 21))
  assert len(set(evals[0:6])) == 1 and evals[6] != evals[5]
  assert len(set(evals[6:11])) == 1 and evals[11] != evals[10]
  assert evals[16] == evals[0]                      # the cycle restarts
  assert task.eval_loss_at(params, 12) == task.metric_at(params, 12)
  # the step-free stand-in is the mean over the phases
  mean = np.mean([evals[1], evals[6], evals[11]])
  assert float(task.metric(params)) == pytest.approx(mean, rel=1e-4)
  # it is the rotation that drifts: with angle 0 nothing changes
  still = T.get("drift_regression", period=5, phases=3, n_train=1,
                n_test=16, hidden=4, angle=0.0)
  flat = _per_step(still, params, still.loss, 12)
  assert np.allclose(flat, flat[0], rtol=1e-6)


def test_drift_digits_corruption_switches_and_is_deterministic():
  task = T.get("drift_digits", period=5, phases=4, n_train=1,
               corruptions=("clean", "blur", "permute"))
  params = jax.jit(task.init)(KEY)
  losses = _per_step(task, params, task.loss, 20)
  # 4 phases over 3 corruptions: phase 3 is clean again
  for t in range(19):
    c, c_next = (t // 5) % 4 % 3, ((t + 1) // 5) % 4 % 3
    assert (losses[t + 1] == losses[t]) == (c_next == c), t
  assert losses[15] == losses[0]
  batch = jax.jit(task.batch)
  clean, blur, perm = (np.asarray(batch(KEY, t)[0][0]) for t in (0, 5, 10))
  assert np.allclose(np.sort(perm), np.sort(clean))   # a permutation ...
  assert not np.allclose(perm, clean)                 # ... not the identity
  assert not np.allclose(blur, clean)
  # the blur is a 3x3 box mean (zero padding)
  img = np.pad(clean.reshape(8, 8), 1)
  assert blur.reshape(8, 8)[3, 4] == pytest.approx(img[3:6, 4:7].mean(),
                                                   rel=1e-5)
  ce = list(_per_eval(task.eval_loss_at, params, 16))
  assert len(set(ce[0:6])) == 1 and ce[6] != ce[5] and ce[11] != ce[10]
  acc = float(jax.jit(task.metric_at)(params, 3))
  assert 0.0 <= acc <= 1.0

  noisy = T.get("drift_digits", period=5, phases=2, n_train=1, noise=0.5,
                corruptions=("clean", "noise"))
  nb = jax.jit(noisy.batch)
  x = lambda key, t: np.asarray(nb(key, t)[0])
  x0, x7 = x(KEY, 0), x(KEY, 7)
  assert np.array_equal(x7, x(KEY, 7))                        # same key
  assert not np.allclose(x7, x(KEY, 8))                       # fresh noise
  assert not np.allclose(x7, x(jax.random.PRNGKey(4), 7))     # other key
  assert np.array_equal(x0, x(KEY, 4))                        # clean phase
  assert np.std(x7 - x0) == pytest.approx(0.5, rel=0.1)
  # the test set's noise is one fixed draw: the metric is constant in-phase
  ce = _per_eval(noisy.eval_loss_at, params, 11)
  assert ce[6] == ce[10] and ce[6] != ce[5]
  with pytest.raises(ValueError, match="unknown corruptions"):
    T.get("drift_digits", corruptions=("clean", "fog"))


def test_drift_classes_skews_each_batch_to_the_rotating_subset():
  task = T.get("drift_classes", period=5, phases=3, batch_size=10,
               skew=0.8, classes_per_phase=3)
  assert T.class_subset(0) == (0, 1, 2) and T.class_subset(3) == (9, 0, 1)
  batches = jax.jit(jax.vmap(task.batch, (None, 0)))
  xs, labels = batches(KEY, jnp.arange(17))
  xs2, labels2 = batches(KEY, jnp.arange(17))
  assert np.array_equal(labels, labels2) and np.array_equal(xs, xs2)
  for t, y in enumerate(np.asarray(labels)):
    fav = T.class_subset((t // 5) % 3)
    assert np.isin(y[:8], fav).all() and not np.isin(y[8:], fav).any(), t
  other, _ = batches(jax.random.PRNGKey(4), jnp.arange(17))
  assert not np.allclose(xs, other)
  # the metric is the full test set, the same at every step
  assert task.metric_at is None and task.switch_every == 5


# ---- every task runs through the runner -------------------------------------

@pytest.mark.parametrize("name,kw", [
    ("drift_regression", dict(period=10, phases=2, hidden=8, n_train=64,
                              n_test=32, eval_every=5)),
    ("drift_digits", dict(period=10, phases=2, hidden=(8,), eval_every=5)),
    ("drift_classes", dict(period=10, phases=2, hidden=(8,),
                           eval_every=5)),
    ("resnet_digits", dict(steps=20, width=4, blocks=1, batch_size=16,
                           eval_every=5)),
])
def test_tasks_run_through_the_runner(name, kw):
  task = T.get(name, **kw)
  res = R.run(task, "adamw", seeds=[1, 2])
  assert res.loss.shape == (2, 20) and res.metric.shape == (2, 5)
  assert np.isfinite(res.loss).all() and np.isfinite(res.metric).all()
  assert not np.array_equal(res.loss[0], res.loss[1])


def test_resnet_conv_matches_lax_and_skips_are_identity():
  @jax.jit
  def parts(key):
    x = T._normal(key, (2, 8, 8, 3))
    w = T._normal(jax.random.fold_in(key, 1), (3, 3, 3, 5))
    ref = jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    params = T._resnet_init(key, 4, 2)
    # zero residual branches: the net is the stem, the pool, GAP and head
    p0 = dict(params, blocks=jax.tree.map(jnp.zeros_like, params["blocks"]))
    xi = T._normal(jax.random.fold_in(key, 2), (2, 8, 8, 1))
    stem = jax.nn.relu(T._conv(xi, params["stem"]["w"]))
    pooled = stem.reshape(2, 4, 2, 4, 2, 4).max(axis=(2, 4))
    expect = pooled.mean(axis=(1, 2)) @ params["head"]["w"]
    return (T._conv(x, w), ref, T._resnet(p0, xi), expect,
            T._resnet(params, xi), len(params["blocks"]))

  mine, ref, out0, expect, out, n_blocks = parts(KEY)
  assert np.allclose(mine, ref, atol=1e-4)
  assert np.allclose(out0, expect, atol=1e-5)
  assert n_blocks == 2 and not np.allclose(out, out0)   # the blocks act


def test_epoch_sampling_reads_each_example_once_per_epoch():
  """``sampling='epochs'``: a fresh permutation each epoch, read batch by
  batch (what a training loop does); the default draws with replacement."""
  from ae_jax.bench.tasks import _sample  # pylint: disable=import-outside-toplevel
  key = jax.random.PRNGKey(3)
  n, b = 40, 8
  draw = jax.jit(lambda t: _sample(key, t, n, b, "epochs"))
  for epoch in range(2):
    seen = np.concatenate([np.asarray(draw(epoch * 5 + t)) for t in range(5)])
    assert sorted(seen.tolist()) == list(range(n))
  # another epoch, another order; the batches of one epoch never repeat
  assert not np.array_equal(np.asarray(draw(0)), np.asarray(draw(5)))
  # a remainder (n % b) is left out of the epoch, never read twice
  odd = np.concatenate([np.asarray(_sample(key, t, 42, 8, "epochs"))
                        for t in range(5)])
  assert len(set(odd.tolist())) == 40
  with_replacement = np.concatenate([np.asarray(_sample(key, t, n, b))
                                     for t in range(5)])
  assert len(set(with_replacement.tolist())) < n   # repeats (this key)
  with pytest.raises(ValueError, match="sampling"):
    _sample(key, 0, n, b, "shuffle")
  with pytest.raises(ValueError, match="sampling"):   # when built
    T.get("regression", sampling="shuffle")
  with pytest.raises(ValueError, match="batch_size"):
    _sample(key, 0, 4, 8, "epochs")
  task = T.get("regression", n_train=256, batch_size=32, sampling="epochs")
  assert task.name == "regression_bs32_epochs"
  assert T.get("digits_cnn", sampling="epochs").name == "digits_cnn_epochs"


# ---- time_to_recover and regret on hand-made curves ------------------------

def test_time_to_recover_hand_made():
  steps = np.arange(12)
  curve = np.array([[4, 3, 2, 1, 3, 2, 1.05, 1, 5, 5, 5, 5],    # 2, never
                    [4, 3, 2, 1, 1, 1, 1, 1, 9, 1, 1, 1]])      # 0, 1
  assert list(M.switch_steps(steps, 4)) == [4, 8]
  t = M.time_to_recover(curve, steps, 4, window=1, tolerance=0.1)
  assert t.shape == (2, 2)
  assert t.tolist() == [[2, 4], [0, 1]]          # never -> capped at P = 4
  t_nan = M.time_to_recover(curve, steps, 4, window=1, never=np.nan)
  assert t_nan[0, 0] == 2 and math.isnan(t_nan[0, 1])
  assert M.mean_time_to_recover(curve, steps, 4, window=1).tolist() == [
      3.0, 0.5]
  # absolute tolerance: within 0.5 of the pre-switch level 1
  assert M.time_to_recover(curve[0], steps, 4, window=1, tolerance=0.5,
                           relative=False)[0] == 2   # 1.05, not 2 (> 1.5)


def test_time_to_recover_smoothing_stays_inside_the_phase():
  steps = np.arange(8)
  curve = np.array([9, 3, 1, 2, 6, 2, 1, 2], float)
  # pre-switch level: mean(3, 1, 2) = 2 (last 3 steps); the new phase,
  # averaged over +-1.5 steps clipped to it: 4, 3, 1.67, 1.5 -> step 6
  assert M.time_to_recover(curve, steps, 4, window=3)[0] == 2
  # the phase's own best instead of the pre-switch level
  hard = np.array([4, 3, 2, 1, 5, 3, 2.1, 2])
  assert M.time_to_recover(hard, steps, 4, window=1)[0] == 4     # never
  assert M.time_to_recover(hard, steps, 4, window=1,
                           reference="phase_best")[0] == 2     # 2.1 <= 2.2
  # non-finite samples: a nan after the switch is skipped, a nan level
  # never recovers
  gap = np.array([4, 3, 2, 1, np.nan, 1.0, 1.0, 1.0])
  assert M.time_to_recover(gap, steps, 4, window=1)[0] == 1
  lost = np.array([4, 3, 2, np.nan, 1.0, 1.0, 1.0, 1.0])
  assert M.time_to_recover(lost, steps, 4, window=1)[0] == 4
  with pytest.raises(ValueError):
    M.time_to_recover(curve, steps, 4, at_switch="middle")


def test_time_to_recover_on_metric_curves_uses_the_old_phase_at_a_switch():
  ev = np.array([0, 2, 4, 6, 8])
  acc = np.array([0.1, 0.8, 0.9, 0.5, 0.89])
  # metric_at convention: the evaluation at step 4 is phase 0's last one,
  # so one switch (at 4) with level 0.9; 0.89 >= 0.9 - 0.02 at step 8
  assert list(M.switch_steps(ev, 4, at_switch="old")) == [4]
  t = M.time_to_recover(acc, ev, 4, window=2, tolerance=0.02,
                        relative=False, higher_is_better=True,
                        at_switch="old")
  assert t.tolist() == [4]
  # read as per-step samples the same numbers give two instant recoveries
  t_new = M.time_to_recover(acc, ev, 4, window=2, tolerance=0.02,
                            relative=False, higher_is_better=True)
  assert t_new.tolist() == [0, 0]
  assert M.mean_time_to_recover(acc[:2], ev[:2], 4).shape == ()
  assert math.isnan(M.mean_time_to_recover(acc[:2], ev[:2], 4))


def test_drift_levels_common_and_attainable_hand_made():
  """``benchmarks.drift``'s clocks: the common level is the reference's
  pre-switch level; the attainable one is the higher of that and the level
  the reference itself reaches by the end of the new phase, so a switch into
  a harder phase (here the first) is not 'never' for every method."""
  from benchmarks import drift
  period = 10
  ref = np.concatenate([np.full(10, 1.0), np.full(10, 5.0),
                        np.full(10, 0.5)])[None]
  assert drift._common_levels(ref, period, window=3) == [1.0, 5.0]
  assert drift._attainable_levels(ref, period, window=3) == [5.0, 5.0]
  run = np.concatenate([np.full(10, 1.0), np.full(3, 9.0), np.full(7, 5.0),
                        np.full(5, 2.0), np.full(5, 0.4)])[None]
  common = drift.switch_times(run, period, [1.0, 5.0], window=3)
  # switch 0 never gets back to 1.0 (the whole period); at switch 1 the
  # first 3-step mean (2.0) is within 10 % of 5.0 at once (window middle: 1)
  assert common.tolist() == [[10.0, 1.0]]
  attainable = drift.switch_times(run, period, [5.0, 5.0], window=3)
  # the first 3-step mean under 5.5 is steps 13-15's (9, 5, 5 -> 6.3 no;
  # 5, 5, 5 at offset 3), read at the window's middle
  assert attainable.tolist() == [[4.0, 1.0]]
  assert drift.switch_times(run, period, [1.0, 5.0], window=3).mean(
      -1).tolist() == [5.5]


def test_regret_and_hindsight_best():
  steps = np.array([0, 1, 2])
  assert M.regret(np.array([2.0, 2.0, 2.0]), steps,
                  np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
  # uneven trapezoids, a (2, E) curve against a broadcast (E,) reference
  r = M.regret(np.array([[0.0, 2.0, 0.0], [1.0, 1.0, 1.0]]),
               np.array([0, 1, 3]), np.array([0.0, 0.0, 0.0]))
  assert r.tolist() == pytest.approx([1.0, 1.0])
  acc = M.regret(np.array([0.5, 0.5, 0.5]), steps, np.array([0.9] * 3),
                 higher_is_better=True)
  assert acc == pytest.approx(0.4)
  assert M.regret(np.array([1.0, np.nan, 1.0]), steps,
                  np.ones(3), higher_is_better=True) == np.inf
  assert math.isnan(M.regret(np.ones(3), steps, np.array([1.0, np.inf, 1])))
  grid = np.array([[[3.0, 3.0, 3.0], [3.0, 3.0, 3.0]],
                   [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]],       # best mean
                   [[0.0, np.nan, 0.0], [0.0, 0.0, 0.0]]])   # diverged
  g, ref = M.hindsight_best(grid, steps)
  assert g == 1 and np.array_equal(ref, grid[1])
  assert M.hindsight_best(grid[:2], steps, higher_is_better=True)[0] == 0
  assert M.regret(grid[0], steps, ref).tolist() == [2.0, 1.0]
