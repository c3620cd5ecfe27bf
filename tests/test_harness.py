"""The experiment harness (ae_jax.bench): metrics on hand-made curves,
the registries, a tiny end-to-end run, ``ae-jax compare``."""

import math

import numpy as np
import pytest

import ae_jax as ae

from ae_jax.bench import metrics as M
from ae_jax.bench import optimizers as O
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T


# ---- metrics on hand-made curves ----------------------------------------

def test_time_to_target_first_crossing_and_never():
  steps = np.array([0, 10, 20, 30])
  curves = np.array([[5.0, 2.0, 0.5, 0.4],     # reaches 1.0 at step 20
                     [5.0, 4.0, 3.0, 2.0],     # never
                     [0.9, 2.0, 0.1, 0.1],     # already at step 0
                     [5.0, np.nan, 0.5, 0.5]])  # nan is not "reached"
  ttt = M.time_to_target(curves, steps, 1.0)
  assert ttt[0] == 20 and math.isnan(ttt[1]) and ttt[2] == 0 and ttt[3] == 20
  acc = np.array([[0.1, 0.5, 0.96, 0.97]])
  assert M.time_to_target(acc, steps, 0.95, higher_is_better=True)[0] == 20
  assert math.isnan(M.time_to_target(acc, steps, 0.99, True)[0])


def test_auc_is_time_average_and_inf_on_blow_up():
  steps = np.array([0, 1, 2])
  assert M.auc(np.array([2.0, 2.0, 2.0]), steps) == pytest.approx(2.0)
  assert M.auc(np.array([0.0, 1.0, 2.0]), steps) == pytest.approx(1.0)
  # uneven spacing: trapezoids, not a plain mean
  assert M.auc(np.array([0.0, 0.0, 3.0]), np.array([0, 2, 3])) == \
      pytest.approx(0.5)
  assert M.auc(np.array([1.0, np.inf, 1.0]), steps) == np.inf


def test_incidents_divergence_and_final():
  loss = np.array([[1.0, 0.5, np.nan, np.inf],
                   [1.0, 0.5, 0.4, 0.3],
                   [1.0, 20.0, 0.5, 0.4]])
  assert list(M.nonfinite(loss)) == [2, 0, 0]
  assert list(M.diverged(loss)) == [True, False, True]
  assert list(M.final(loss))[1] == 0.3


def test_oscillation_separates_jitter_from_trend():
  t = np.arange(400)
  smooth = np.exp(-t / 100)
  jitter = smooth * np.exp(0.3 * (-1.0) ** t)   # ±0.3 in log space
  osc = M.oscillation(np.stack([smooth, jitter]))
  assert osc[0] < 0.01
  assert osc[1] == pytest.approx(0.3, rel=0.1)
  assert M.oscillation(np.array([1.0, np.nan, 1.0]))[()] == np.inf
  # a loss that crosses 0 still gets a finite, relative measure
  assert np.isfinite(M.oscillation(np.sin(t / 3.0)))


def test_gamma_variance_stability_and_dlog():
  g = np.concatenate([np.full(50, 1e3), np.full(100, 0.1)])
  assert M.var_log_gamma(g, skip=50) == pytest.approx(0.0)
  g2 = np.concatenate([np.full(50, 1.0), np.tile([0.1, 1.0], 50)])
  assert M.var_log_gamma(g2, skip=50) == pytest.approx(
      np.var(np.log([0.1, 1.0])))
  loss = np.array([[10.0, 50.0, np.nan, 8.0, 12.0, 5.0, 4.0],
                   [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0],
                   [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, np.nan]])
  tts = M.time_to_stability(loss)
  assert tts[0] == 5 and tts[1] == 1 and math.isnan(tts[2])
  lr = np.array([1.0, 1.0, np.exp(-0.7), np.exp(-0.5)])
  assert M.max_abs_dlog(lr) == pytest.approx(0.7)


def test_t_interval_and_ranking():
  mean, half, n = M.t_interval([1.0, 2.0, 3.0, np.nan])
  assert (mean, n) == (2.0, 3)
  assert half == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
  assert "(3/4)" in M.fmt_ci([1.0, 2.0, 3.0, np.nan])
  assert M.fmt_ci([np.nan, np.nan]).startswith("—")
  rank = M.normalised_ranking(
      {"a": {"x": 100.0, "y": 200.0, "z": np.nan},
       "b": {"x": 300.0, "y": 100.0, "z": 100.0}},
      budgets={"a": 1000, "b": 1000})
  assert rank["x"] == pytest.approx(2.0)      # median of 1 and 3
  assert rank["y"] == pytest.approx(1.5)      # median of 2 and 1
  assert rank["z"] == pytest.approx(10.5)     # never -> 2 x budget = 20x


# ---- registries -----------------------------------------------------------

def test_optimizer_registry_has_the_issue_peers_and_knockouts():
  need = {"adamw", "sgdm", "adamw_cosine", "adamw_warmup_cosine",
          "adamw_step", "prodigy", "dadapt_adamw", "mechanize_adam", "dog",
          "schedule_free_adamw", "adamw_plateau", "tox_spsa",
          "tox_adaptive", "ae_sgdm", "ae_adam", "ae_adamw", "adafactor",
          "ae_adafactor"}
  assert need <= set(O.names())
  for law in O.KNOCKOUTS:
    assert f"ae_sgdm-no_{law}" in O.names()
  # the Adam presets already run without the gauge: no duplicate knock-out
  assert "ae_adamw-no_gauge" not in O.names()
  assert O.get("schedule_free_adamw").eval_params is not None
  assert O.get("adamw_plateau").needs_value
  assert O.get("ae_adamw").is_ae and O.get("ae_adamw").needs_value
  assert not O.get("adamw").needs_value
  tuned = O.get("adamw@tuned")
  assert tuned.name == "adamw@tuned" and O.is_tuned(tuned.name)
  with pytest.raises(KeyError, match="unknown optimizer"):
    O.get("nope")
  assert O.expand(["defaults"]) == O.GROUPS["defaults"]


def test_knockout_changes_the_law_chain():
  import jax.numpy as jnp
  params = {"w": jnp.ones(3)}
  full = O.get("ae_sgdm").factory(1e-2, 10)
  # The registry follows the canonical chain: knock-outs of its default
  # laws (-no_hypergradient), knock-ins of the opt-in ones (+budget).
  knocked = O.get("ae_sgdm-no_hypergradient").factory(1e-2, 10)
  added = O.get("ae_sgdm+budget").factory(1e-2, 10)
  assert (len(full.init(params).controller.laws)
          == len(knocked.init(params).controller.laws) + 1)
  assert (len(full.init(params).controller.laws) + 1
          == len(added.init(params).controller.laws))


def test_task_registry_and_fixed_data_order():
  import jax
  assert {"regression", "quadratic", "rosenbrock", "deep_linear",
          "digits_cnn", "mnist1d_cnn"} <= set(T.names())
  task = T.get("regression", batch_size=8)
  assert task.name == "regression_bs8"
  key = jax.random.PRNGKey(3)
  b1, b2 = task.batch(key, 5), task.batch(key, 5)
  assert np.array_equal(b1[0], b2[0]) and b1[0].shape == (8, 16)
  assert not np.array_equal(b1[0], task.batch(key, 6)[0])
  scaled = T.scaled(task, 10.0)
  p = task.init(key)
  assert float(scaled.loss(p, b1)) == pytest.approx(10 * float(task.loss(p, b1)),
                                                    rel=1e-5)
  assert float(scaled.metric(p)) == pytest.approx(float(task.metric(p)))
  with pytest.raises(KeyError, match="unknown task"):
    T.get("nope")


def test_char_lm_task_is_causal_and_starts_near_uniform():
  import jax
  import jax.numpy as jnp
  task = T.get("char_lm", batch_size=4, context=16, d_model=16, heads=2,
               layers=1, n_chars=20_000, eval_windows=8)
  key = jax.random.PRNGKey(0)
  batch = task.batch(key, 3)
  assert batch.shape == (4, 17) and batch.dtype == jnp.int32
  assert int(batch.max()) < 128 and int(batch.min()) >= 0
  assert np.array_equal(batch, task.batch(key, 3))  # fixed data order
  params = task.init(key)
  # GPT-style init: the first loss is close to log(vocab), perplexity ~128
  assert float(task.loss(params, batch)) == pytest.approx(math.log(128),
                                                          rel=0.05)
  assert 100 < float(task.metric(params)) < 160
  # causal: changing the last token leaves every earlier logit unchanged
  tokens = batch[:, :-1]
  changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 128)
  a = T._transformer(params, tokens, 2)
  b = T._transformer(params, changed, 2)
  assert np.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
  assert not np.allclose(a[:, -1], b[:, -1])
  with pytest.raises(RuntimeError, match="ASCII bytes"):
    T.stdlib_corpus(10**12)


def test_experiments_cover_the_issue_menu():
  import benchmarks.experiments as E
  assert {"1", "2", "3", "7", "8", "9", "10", "13", "16", "17",
          "18"} <= set(E.EXPERIMENTS)


# ---- tiny end-to-end runs ---------------------------------------------------

QUAD = dict(dim=4, condition=10.0, steps=40, eval_every=10, target=1e-2)


def test_run_records_and_same_init_across_optimizers():
  task = T.get("quadratic", **QUAD)
  a = R.run(task, "ae_sgdm", seeds=[1, 2])
  s = R.run(task, "sgdm", seeds=[1, 2])
  assert a.loss.shape == (2, 40) and a.metric.shape == (2, 5)
  assert list(a.eval_steps) == [0, 10, 20, 30, 40]
  # identical start, different seeds start differently
  assert np.array_equal(a.metric[:, 0], s.metric[:, 0])
  assert a.metric[0, 0] != a.metric[1, 0]
  assert set(R.SIGNALS) <= set(a.signals) and not s.signals
  assert {"learning_rate", "momentum"} <= set(a.coefficients)
  assert a.coefficients["learning_rate"].shape == (2, 40)
  # first step of both runs used the same loss (same params, same batch)
  assert a.loss[0, 0] == pytest.approx(s.loss[0, 0])
  assert np.all(np.isfinite(a.loss)) and a.metric[0, -1] < a.metric[0, 0]
  summ = a.summary(task)
  assert set(summ) >= {"final", "ttt", "auc", "nonfinite", "oscillation",
                       "var_log_gamma", "max_dlog_lr"}


def _ae_adamw_spec(name, **flags):
  """ae_adamw started at the given rate (warm_start=1.0) with the law chain
  ``canonical_laws(names, **flags)``."""
  names = O.AE_NAMES["ae_adamw"]

  def factory(learning_rate, steps):
    del steps
    return ae.ae_adamw(learning_rate, warm_start=1.0,
                       laws_chain=ae.canonical_laws(names, **flags))

  return O.OptSpec(name, factory, 1e-3, needs_value=True, is_ae=True,
                   family="adamw")


def test_safety_law_brings_an_absurd_adam_rate_down():
  """Experiment 13 in miniature: from α = 1 the Adam preset keeps α near 1
  on the regression MLP (its signals are all relative to their own scale);
  with the optional AE-10 safety law α falls and the test loss is lower.

  The preset is pinned to the configuration this measures: α starts at the
  given rate (warm_start=1.0; the default starts at 1e-3 of it) and the
  chain is the presets' before the self-tuning redesign: drive, coupling,
  trust region (budget) and resonance, no hypergradient."""
  task = T.get("regression", steps=300)
  flags = dict(drive=True, resonance=True, coupling=True, budget=True,
               hypergradient=False)
  off = R.run(task, _ae_adamw_spec("ae_adamw-drive", **flags), seeds=[1],
              learning_rate=1.0)
  on = R.run(task, _ae_adamw_spec("ae_adamw-drive+safety", safety=True,
                                  **flags), seeds=[1], learning_rate=1.0)
  a_off = off.coefficients["learning_rate"][0]
  a_on = on.coefficients["learning_rate"][0]
  assert a_off[100] > 0.5 and a_on[100] < 0.1 * a_off[100]
  assert on.metric[0, -1] < 0.5 * off.metric[0, -1]
  assert np.isfinite(on.loss).all()


def test_stale_gradients_change_the_run():
  task = T.get("quadratic", **QUAD)
  fresh = R.run(task, "sgdm", seeds=[1], learning_rate=0.5)
  stale = R.run(task, "sgdm", seeds=[1], learning_rate=0.5, delay=3)
  # the first 4 gradients are all taken at the initial point
  assert stale.loss[0, 0] == pytest.approx(fresh.loss[0, 0])
  assert not np.allclose(stale.metric, fresh.metric)


def test_tune_picks_the_best_grid_point_on_seed_0():
  task = T.get("quadratic", **QUAD)
  lr, table = R.tune(task, "sgdm", grid=[1e-4, 1e-1, 1e3])
  assert table["seed"] == 0 and len(table["final"]) == 3
  assert lr == 1e-1  # 1e-4 barely moves; 1e3 diverges
  res = R.run(task, "sgdm@tuned", seeds=[1], tune_grid=[1e-4, 1e-1])
  assert res.learning_rate == 1e-1 and res.tuning["grid"] == [1e-4, 1e-1]


def test_schedule_free_metric_uses_eval_params():
  task = T.get("quadratic", **QUAD)
  res = R.run(task, "schedule_free_adamw", seeds=[1])
  assert np.isfinite(res.metric).all()


def test_windowed_tensor_optix_peer():
  pytest.importorskip("tensor_optix", reason="optional benchmarks extra")
  task = T.get("quadratic", dim=4, condition=10.0, steps=100, eval_every=10)
  res = R.run(task, "tox_spsa", seeds=[1, 2])
  lr = res.coefficients["learning_rate"]
  assert lr.shape == (2, 100)
  assert np.all(lr[:, :50] == pytest.approx(1e-3))   # first window
  assert not np.allclose(lr[:, 50:], 1e-3)            # after a suggestion
  again = R.run(task, "tox_spsa", seeds=[2])           # per-seed RNG
  assert np.allclose(again.coefficients["learning_rate"][0], lr[1])


def test_compare_cli_prints_table_and_writes_pngs(tmp_path, capsys):
  from ae_jax.bench import cli
  status = cli.main(["compare", "--task", "quadratic", "--optimizers",
                     "sgdm,ae_sgdm", "--seeds", "2", "--steps", "30",
                     "--out", str(tmp_path)])
  assert status == 0
  out = capsys.readouterr().out
  lines = out.splitlines()
  header = next(i for i, l in enumerate(lines) if l.startswith("optimizer"))
  assert "time-to-target" in lines[header] and "AUC" in lines[header]
  rows = {l.split()[0]: l for l in lines[header + 2:header + 4]}
  assert set(rows) == {"sgdm", "ae_sgdm"}
  assert all("±" in r for r in rows.values())
  for name in ("quadratic_curves.png", "quadratic_coefficients.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_cli_rejects_unknown_names(capsys):
  from ae_jax.bench import cli
  assert cli.main(["compare", "--optimizers", "adamw,nope", "--no-plot"]) == 2
  assert "unknown optimizer" in capsys.readouterr().err
  assert cli.main(["compare", "--task", "nope"]) == 2
  assert cli.main(["compare", "--list"]) == 0
  assert "ae_adamw-no_hypergradient" in capsys.readouterr().out
