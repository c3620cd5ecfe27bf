"""AE-1 measurement: the filters and gradient statistics against hand-computed values."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import measurement
from ae_jax.measurement import FilterConfig, GradStats

_TINY = 1e-12


class _EMA:
  """The reference's scalar EMA (AE.py ``_EMA``), verbatim semantics: the
  oracle for ``mode="reference"``."""

  def __init__(self, beta):
    self.b = float(beta)
    self.m = None
    self.t = 0

  def update(self, x):
    x = float(x)
    if self.m is None:
      self.m = x
      self.t = 1
      return x
    self.m = self.b * self.m + (1.0 - self.b) * x
    self.t += 1
    return self.m / max(1.0 - self.b**self.t, 1e-12)


def _run_ema(samples, decay, mode):
  step = jax.jit(lambda m, x, c: measurement.ema(m, x, decay, c, mode))
  moment = jnp.zeros([], jnp.float32)
  out = []
  for count, x in enumerate(samples):
    moment, estimate = step(moment, jnp.float32(x), jnp.int32(count))
    out.append(float(estimate))
  return np.array(out)


# -- the EMA ------------------------------------------------------------------


def test_debiased_ema_matches_closed_form():
  b = 0.6
  x1, x2, x3 = 2.0, -1.0, 4.0
  expected = [
      x1,
      (b * x1 + x2) / (1 + b),
      (b * b * x1 + b * x2 + x3) / (1 + b + b * b),
  ]
  np.testing.assert_allclose(_run_ema([x1, x2, x3], b, "debiased"), expected,
                             rtol=1e-6)


def test_debiased_ema_of_constant_is_constant():
  np.testing.assert_allclose(_run_ema([3.0] * 5, 0.9, "debiased"),
                             [3.0] * 5, rtol=1e-6)


def test_reference_ema_matches_reference_class():
  b = 0.6
  samples = [2.0, -1.0, 4.0, 0.5, 0.5]
  oracle = _EMA(b)
  expected = [oracle.update(x) for x in samples]
  np.testing.assert_allclose(_run_ema(samples, b, "reference"), expected,
                             rtol=1e-6)
  # The reference's quirk: a constant c is over-estimated at t = 2,
  # c / (1 - b^2), unlike the debiased EMA.
  got = _run_ema([3.0, 3.0], b, "reference")
  np.testing.assert_allclose(got, [3.0, 3.0 / (1 - b * b)], rtol=1e-6)



@pytest.mark.parametrize("mode", ["debiased", "reference"])
def test_emas_equal_each_scalar_ema(mode, default_optimization):
  # measure and the step-size law update their filters as one vector per
  # level; each entry is the scalar EMA's step to rounding (XLA may fuse a
  # multiply-add into an FMA in one form only). One step at a time from the
  # same moments, so the rounding cannot accumulate. Compiled at LLVM's
  # default level, as users compile it (the suite's level 0 forms beta^t its
  # own way in each form: 7 ulp apart).
  decays = (0.9, 0.99, 0.999, 0.5)
  rng = np.random.default_rng(0)

  @functools.partial(jax.jit, compiler_options=default_optimization)
  def both(moments, sample, count):
    vec = measurement.emas(moments, sample, decays, count, mode)
    one = [measurement.ema(m, x, d, count, mode)
           for m, x, d in zip(moments, sample, decays)]
    return vec, tuple(zip(*one))

  moments = tuple(jnp.zeros([], jnp.float32) for _ in decays)
  for count in range(12):
    sample = tuple(jnp.float32(x) for x in rng.normal(size=len(decays)))
    (vec_m, vec_e), (one_m, one_e) = both(moments, sample, jnp.int32(count))
    np.testing.assert_array_max_ulp(np.array(vec_m), np.array(one_m), 2)
    np.testing.assert_array_max_ulp(np.array(vec_e), np.array(one_e), 4)
    moments = one_m
  with pytest.raises(ValueError, match="one dtype"):
    measurement.emas((jnp.zeros([], jnp.float32), jnp.zeros([], jnp.bfloat16)),
                     (1.0, 1.0), (0.9, 0.9), jnp.int32(0), mode)


def test_emas_keeps_a_low_precision_moment_finite():
  # β^t is formed in the default float's precision (Optax's
  # bias_correction): in bfloat16, 0.999 rounds to 1 and 1 - β^t to 0.
  zero = jnp.zeros([], jnp.bfloat16)
  _, (est,) = measurement.emas((zero,), (jnp.bfloat16(2.0),), (0.999,),
                               jnp.int32(0), "debiased")
  np.testing.assert_allclose(float(est), 2.0, rtol=2e-2)


def test_emas_vmap_and_grad():
  def step(x, decays=(0.9, 0.5)):
    zero = jnp.zeros([], jnp.result_type(x))
    _, (a, b) = measurement.emas((zero, zero), (x, 2.0 * x), decays,
                                 jnp.int32(1), "debiased")
    return a + b

  # at count 1 (the second sample) from zero moments: (1-β) x / (1-β²)
  closed = lambda d: (1 - d) / (1 - d * d)
  expected = closed(0.9) + 2 * closed(0.5)
  np.testing.assert_allclose(jax.grad(step)(1.0), expected, rtol=1e-6)
  xs = jnp.array([1.0, -2.0, 3.0])
  np.testing.assert_allclose(jax.vmap(step)(xs), expected * xs, rtol=1e-6)
  # through traced decays (meta-gradients of the filter gains):
  # d/dβ (1 - β)/(1 - β²) = d/dβ 1/(1 + β) = -1/(1 + β)²
  grad_decay = jax.grad(lambda d: step(1.0, (d, jnp.float32(0.5))))
  np.testing.assert_allclose(grad_decay(jnp.float32(0.9)), -1 / 1.9 ** 2,
                             rtol=1e-5)

# -- gradient statistics ------------------------------------------------------


def test_gradient_stats_global_over_leaves():
  grads = {
      "w": jnp.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]]),
      "b": jnp.array([2.0]),
      "nested": (jnp.array(-4.0), jnp.ones((2, 2, 1))),
  }
  ref = jax.tree.map(lambda g: 2.0 * jnp.ones_like(g), grads)
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads)])
  flat_ref = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ref)])
  stats = jax.jit(measurement.gradient_stats)(grads, ref)
  chex.assert_trees_all_close(
      stats,
      GradStats(size=np.float32(flat.size), sum=np.float32(flat.sum()),
                sumsq=np.float32((flat**2).sum()),
                dot=np.float32((flat * flat_ref).sum()),
                ref_sumsq=np.float32((flat_ref**2).sum()),
                nonfinite=np.float32(0.0),
                peak=np.float32(np.abs(flat).max())),
      rtol=1e-6)
  assert float(stats.size) == 12.0


def test_gradient_stats_without_reference():
  stats = measurement.gradient_stats([jnp.array([3.0, 4.0])])
  assert float(stats.sumsq) == 25.0
  assert float(stats.dot) == 0.0 and float(stats.ref_sumsq) == 0.0


def test_bfloat16_gradients_accumulate_in_float32():
  # 1 + 2^-7 is exact in bfloat16; 1000 of them sum to 1007.8125, which
  # bfloat16 (8 significant bits) cannot hold (it rounds to 1008).
  g = {"a": jnp.full((600,), 1.0078125, jnp.bfloat16),
       "b": jnp.full((20, 20), 1.0078125, jnp.bfloat16)}
  stats = jax.jit(measurement.gradient_stats)(g, g)
  for field in jax.tree.leaves(stats):
    assert field.dtype == jnp.float32
  assert float(stats.sum) == 1007.8125
  assert float(stats.size) == 1000.0
  np.testing.assert_allclose(float(stats.sumsq), 1000 * 1.0078125**2,
                             rtol=1e-7)
  np.testing.assert_allclose(float(stats.dot), float(stats.sumsq), rtol=0)
  # and the signals come out in float32 too
  sig, _ = measurement.measure(measurement.init_filters(), FilterConfig(),
                               jnp.bfloat16(1.5), stats)
  assert sig.rho.dtype == jnp.float32
  np.testing.assert_allclose(float(sig.rho), 1.0, rtol=1e-6)


# -- measure ------------------------------------------------------------------


_CFG = FilterConfig(loss_mean=0.5, trend=0.5, variance=0.5, grad_variance=0.5,
                    reference=0.5)


def _measure_steps(steps, config=_CFG):
  """Runs jitted ``measure`` over ``(loss, grads, reference, reward)``."""

  @jax.jit
  def one(state, loss, grads, reference, reward):
    stats = measurement.gradient_stats(grads, reference)
    return measurement.measure(state, config, loss, stats, reward)

  state = measurement.init_filters()
  out = []
  for loss, grads, reference, reward in steps:
    sig, state = one(state, jnp.float32(loss), grads, reference,
                     jnp.float32(reward))
    out.append(sig)
  return out, state


def _assert_signals(signals, expected):
  """Compares the named fields; ``measure`` leaves the others at 0, and
  reports ρ as the long-horizon ρ without a horizon reference."""
  got = signals._asdict()
  if "rho" in expected:
    expected = dict(expected, rho_horizon=expected["rho"])
  for name in set(got) - set(expected):
    assert float(got[name]) == 0.0, name
  chex.assert_trees_all_close({k: got[k] for k in expected}, expected,
                              rtol=1e-6, atol=1e-9)


def test_measure_two_steps_by_hand():
  g1 = jnp.array([1.0, -1.0, 2.0, 0.0])   # mean 0.5, var 1.5 - 0.25 = 1.25
  g2 = jnp.array([2.0, 2.0, 2.0, 2.0])    # var 0
  m1 = jnp.zeros(4)                        # no reference yet: rho = 0
  m2 = jnp.array([1.0, 1.0, 1.0, 1.0])     # aligned with g2: rho = 1
  (s1, s2), state = _measure_steps([(2.0, g1, m1, 1.0), (1.0, g2, m2, 3.0)])

  # step 1: every trend is 0, the loss mean is the loss, the deviation 0.
  _assert_signals(
      s1, dict(loss=2.0, loss_mean=2.0, T=0.0, T_scale=0.0, V=_TINY, R=0.0,
               R_scale=0.0, rho=0.0, S=1.25 + _TINY, V_star=_TINY,
               S_star=1.25 + _TINY, gnorm=math.sqrt(6.0) + _TINY, gamma=0.0,
               brake=0.0, clip=1.0))  # grad_clip is off in _CFG: factor 1

  # step 2, debiased EMAs with b = 0.5: est2 = (b x1 + x2) / (1 + b).
  b = 0.5
  mean2 = (b * 2.0 + 1.0) / (1 + b)             # 4/3
  dev = 1.0 - mean2                             # -1/3
  v2 = (b * _TINY + dev * dev + _TINY) / (1 + b)  # 2/27
  s2_expected = (b * (1.25 + _TINY) + _TINY) / (1 + b)
  expected = dict(
      loss=1.0, loss_mean=mean2, T=(b * 0.0 - 1.0) / (1 + b),
      T_scale=1.0 / (1 + b), V=v2, R=2.0 / (1 + b), R_scale=2.0 / (1 + b),
      rho=1.0, S=s2_expected, V_star=(b * _TINY + v2) / (1 + b),
      S_star=(b * (1.25 + _TINY) + s2_expected) / (1 + b),
      gnorm=4.0 + _TINY, gamma=0.0, brake=0.0, clip=1.0)
  _assert_signals(s2, expected)
  np.testing.assert_allclose(float(s2.T), -2.0 / 3.0, rtol=1e-6)
  np.testing.assert_allclose(float(s2.V), 2.0 / 27.0, rtol=1e-6)
  np.testing.assert_allclose(float(s2.V_star), 4.0 / 81.0, rtol=1e-6)
  assert int(state.count) == 2
  assert float(state.prev_loss) == 1.0 and float(state.prev_reward) == 3.0


def test_measure_three_steps_reference_mode():
  """Reference mode: every filter follows the reference's _EMA exactly."""
  cfg = _CFG._replace(mode="reference", loss_mean=0.7, trend=0.6,
                      variance=0.8, grad_variance=0.5, reference=0.9)
  losses = [3.0, 2.0, 2.5]
  grads = [jnp.array([1.0, 2.0]), jnp.array([-1.0, 3.0]),
           jnp.array([0.5, 0.5])]
  refs = [jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array([-1.0, -1.0])]
  sigs, _ = _measure_steps(
      [(l, g, m, 0.0) for l, g, m in zip(losses, grads, refs)], cfg)

  mu_l, t_ema, v_ema = _EMA(0.7), _EMA(0.6), _EMA(0.8)
  s_ema, vstar, sstar = _EMA(0.5), _EMA(0.9), _EMA(0.9)
  prev = None
  for loss, g, m, sig in zip(losses, grads, refs, sigs):
    g, m = np.asarray(g, np.float64), np.asarray(m, np.float64)
    mean = mu_l.update(loss)
    T = t_ema.update(0.0 if prev is None else loss - prev)
    prev = loss
    V = v_ema.update((loss - mean)**2 + _TINY)
    S = s_ema.update(max((g * g).mean() - g.mean()**2, 0.0) + _TINY)
    gnorm = math.sqrt((g * g).sum()) + _TINY
    mnorm = math.sqrt((m * m).sum())
    rho = (float(np.clip(g @ m / (gnorm * (mnorm + _TINY)), -1, 1))
           if mnorm > 0 else 0.0)
    np.testing.assert_allclose(
        [sig.loss_mean, sig.T, sig.V, sig.S, sig.rho, sig.V_star,
         sig.S_star, sig.gnorm],
        [mean, T, V, S, rho, max(vstar.update(V), _TINY),
         max(sstar.update(S), _TINY), gnorm], rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("ref_scale, expected", [(1.0, 1.0), (-3.0, -1.0),
                                                  (0.0, 0.0)])
def test_rho_aligned_opposed_zero(ref_scale, expected):
  grads = {"a": jnp.array([1.0, -2.0]), "b": jnp.ones((2, 3))}
  ref = jax.tree.map(lambda g: ref_scale * g, grads)
  stats = measurement.gradient_stats(grads, ref)
  sig, _ = jax.jit(lambda s: measurement.measure(
      measurement.init_filters(), FilterConfig(), 1.0, s))(stats)
  np.testing.assert_allclose(float(sig.rho), expected, atol=1e-6)


def test_rho_orthogonal_is_zero_and_partial_alignment_is_cosine():
  grads = [jnp.array([1.0, 0.0]), jnp.array([0.0])]
  ref = [jnp.array([0.0, 1.0]), jnp.array([0.0])]
  sig, _ = measurement.measure(measurement.init_filters(), FilterConfig(),
                               1.0, measurement.gradient_stats(grads, ref))
  assert abs(float(sig.rho)) < 1e-7
  ref = [jnp.array([1.0, 1.0]), jnp.array([0.0])]
  sig, _ = measurement.measure(measurement.init_filters(), FilterConfig(),
                               1.0, measurement.gradient_stats(grads, ref))
  np.testing.assert_allclose(float(sig.rho), 1 / math.sqrt(2), rtol=1e-6)


def test_empty_pytree_gives_size_zero_and_finite_signals():
  stats = measurement.gradient_stats({}, {})
  assert float(stats.size) == 0.0
  assert float(stats.sumsq) == 0.0
  state = measurement.init_filters()
  step = jax.jit(lambda st, l: measurement.measure(st, FilterConfig(), l,
                                                   stats))
  for loss in (1.0, 0.5, 0.7):
    sig, state = step(state, loss)
    for name, value in sig._asdict().items():
      assert np.isfinite(float(value)), name
  assert float(sig.rho) == 0.0
  assert float(sig.gnorm) == pytest.approx(_TINY)


def test_nonfinite_loss_is_sanitised():
  cfg = FilterConfig(loss_limit=100.0)
  stats = measurement.gradient_stats([jnp.ones(2)])
  state = measurement.init_filters()
  sig, state = measurement.measure(state, cfg, 1.0, stats)
  sig, state = measurement.measure(state, cfg, jnp.nan, stats)
  assert float(sig.loss) == 100.0
  # Any non-finite loss reads as the worst loss, +limit (as the reference's
  # loss_emergency), even -inf; finite losses are clamped symmetrically.
  sig, state = measurement.measure(state, cfg, -jnp.inf, stats)
  assert float(sig.loss) == 100.0
  sig, state = measurement.measure(state, cfg, -1e9, stats)
  assert float(sig.loss) == -100.0
  for value in sig:
    assert np.isfinite(float(value))


@pytest.mark.parametrize("field, value", [("trend", 1.0), ("variance", -0.1),
                                          ("mode", "adam"),
                                          ("loss_limit", 0.0)])
def test_invalid_filter_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    measurement.validate_filter_config(FilterConfig()._replace(**{field: value}))


def test_gradient_stats_count_and_sanitise_nonfinite_entries():
  grads = {"a": jnp.array([1.0, jnp.nan, 2.0]),
           "b": jnp.array([[jnp.inf, -jnp.inf]])}
  stats = jax.jit(measurement.gradient_stats)(grads)
  assert float(stats.nonfinite) == 3.0
  # NaN and ±inf read as 0 by default ...
  np.testing.assert_allclose(float(stats.sum), 3.0, rtol=1e-6)
  np.testing.assert_allclose(float(stats.sumsq), 5.0, rtol=1e-6)
  # ... ±inf as ±inf_value when given (the reference's ±grad_emergency).
  stats = measurement.gradient_stats(grads, inf_value=1e6)
  assert float(stats.nonfinite) == 3.0
  np.testing.assert_allclose(float(stats.sum), 3.0, rtol=1e-6)
  np.testing.assert_allclose(float(stats.sumsq), 5.0 + 2e12, rtol=1e-6)


def test_a_late_first_reward_does_not_read_as_a_jump():
  config = measurement.FilterConfig()
  state = measurement.init_filters()
  stats = measurement.gradient_stats({"w": jnp.ones(2)})
  for _ in range(3):
    _, state = measurement.measure(state, config, 1.0, stats)
  signals, state = measurement.measure(state, config, 1.0, stats, reward=5.0)
  assert float(signals.R) == 0.0
  signals, state = measurement.measure(state, config, 1.0, stats, reward=6.0)
  assert float(signals.R) > 0.0


@pytest.mark.parametrize("shape", [(700,), (1024,), (3, 700), (500, 500)])
def test_take_blocks_reads_windows_masked_outside_the_leaf(shape):
  # A block holds the entries of the window [s, s + B) of the flat leaf,
  # read as one slice at s clamped into the leaf, the entries outside the
  # window masked to 0. A leaf smaller than a block goes through the
  # element gather (as an Explicitly sharded one does) and must lay its
  # entries out the same way. Oracle: the element-wise index.
  x = jnp.arange(1, math.prod(shape) + 1, dtype=jnp.float32).reshape(shape)
  n, b = x.size, measurement.SAMPLE_BLOCK
  starts = jnp.asarray([1 - b, -5, 0, 1, n - b, n - b + 1, n - 5, n - 1,
                        n // 2], jnp.int32)
  (blocks,) = jax.jit(measurement.take_blocks)((x,), (starts,))
  s = np.asarray(starts)[:, None]
  index = np.clip(s, 0, max(n - b, 0)) + np.arange(b)[None, :]
  flat = np.ravel(np.asarray(x))
  inside = (index >= s) & (index < s + b) & (index < n)
  expected = np.where(inside, flat[np.minimum(index, n - 1)], 0.0)
  np.testing.assert_array_equal(blocks, expected)
  # Under vmap (a population) each member reads its own blocks.
  xs = jnp.stack([x, -x])
  (vb,) = jax.vmap(lambda x: measurement.take_blocks((x,), (starts,)))(xs)
  np.testing.assert_array_equal(vb[1], -blocks)


def test_every_element_is_equally_likely_to_be_read():
  # Over all n + B - 1 starts each element is read exactly B times, so
  # block_scale makes the sums unbiased, edges included.
  n, b = 2500, measurement.SAMPLE_BLOCK
  x = jnp.arange(1, n + 1, dtype=jnp.float32)
  starts = jnp.arange(1 - b, n, dtype=jnp.int32)
  (blocks,) = measurement.take_blocks((x,), (starts,))
  counts = np.zeros(n)
  for row in np.asarray(blocks):
    counts[row[row > 0].astype(int) - 1] += 1
  np.testing.assert_array_equal(counts, b)
  mean = float(jnp.sum(blocks)) / starts.size
  np.testing.assert_allclose(mean * measurement.block_scale(n, 1),
                             float(jnp.sum(x)), rtol=1e-6)
