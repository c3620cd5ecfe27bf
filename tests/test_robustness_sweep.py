"""The starting-rate robustness sweep (benchmarks/robustness.py): figures (a)
and (b) on hand-made arrays, the registry's start grids, and the grid runner
(vmapped over starts x seeds equals one run per start; AE falls back)."""

import dataclasses
import math

import numpy as np
import pytest

from benchmarks import robustness as RB
from ae_jax.bench import optimizers as O
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T

NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def quad():
  return T.get("quadratic", steps=20, eval_every=10)


# ---- (a) and (b) on hand-made arrays ---------------------------------------


def test_cells_reached_and_ratio_by_hand(quad):
  task = dataclasses.replace(quad, target=1.0)  # lower is better
  # 3 starts x 3 seeds per method.
  a = np.array([[0.5, 0.8, 2.0],      # median 0.8: reached
                [1.5, 2.0, 0.9],      # median 1.5: not reached
                [NAN, NAN, 0.1]])     # median of (0.1, inf, inf) = inf
  b = np.array([[1.0, 1.0, 1.0],      # 1.0: reached (<=)
                [0.4, 0.6, 0.5],      # 0.5: reached
                [4.0, INF, 2.0]])     # 4.0: not reached
  zero = np.zeros_like(a)  # the held-out loss is unused: lower is better
  c = RB.cells(task, {"A": {"final_metric": a, "final_held_out": zero},
                      "B": {"final_metric": b, "final_held_out": zero}})
  assert list(c["A"]["reached"]) == [True, False, False]
  assert list(c["B"]["reached"]) == [True, True, False]
  np.testing.assert_allclose(c["A"]["median"], [0.8, 1.5, INF])
  # per start: best 0.8, 0.5, 4.0; A's non-finite cell counts the cap
  np.testing.assert_allclose(c["A"]["ratio"], [1.0, 3.0, RB.RATIO_CAP])
  np.testing.assert_allclose(c["B"]["ratio"], [1.25, 1.0, 1.0])
  s = RB.summarize({"t": c}, ["t"])
  assert s["A"][:2] == (1, 3) and s["B"][:2] == (2, 3)
  assert s["A"][2] == pytest.approx((3.0 * 1e4) ** (1 / 3))
  assert s["B"][2] == pytest.approx(1.25 ** (1 / 3))


def test_accuracy_task_uses_held_out_loss(quad):
  task = dataclasses.replace(quad, target=0.9, higher_is_better=True)
  acc_a = np.array([[0.95, 0.91, 0.2], [NAN, 0.95, 0.95]])
  acc_b = np.array([[0.5, 0.5, 0.5], [0.99, 0.99, 0.99]])
  loss_a = np.array([[0.2, 0.3, 2.0], [NAN, 0.1, 0.1]])
  loss_b = np.array([[0.6, 0.6, 0.6], [0.05, 0.05, 0.05]])
  c = RB.cells(task, {"A": {"final_metric": acc_a, "final_held_out": loss_a},
                      "B": {"final_metric": acc_b, "final_held_out": loss_b}})
  # accuracy medians 0.91 / 0.95 (nan -> -inf) and 0.5 / 0.99
  assert list(c["A"]["reached"]) == [True, True]
  assert list(c["B"]["reached"]) == [False, True]
  # losses: A 0.3, 0.1 (nan -> +inf, median of 0.1, 0.1, inf); B 0.6, 0.05
  np.testing.assert_allclose(c["A"]["ratio"], [1.0, 2.0])
  np.testing.assert_allclose(c["B"]["ratio"], [2.0, 1.0])


def test_ratio_cap_floor_and_all_nonfinite_column():
  r = RB.ratios_to_best(np.array([[1e-20, 1.0, NAN, 1e9],
                                  [1e-12, 2.0, INF, 1.0]]))
  np.testing.assert_allclose(r, [[1.0, 1.0, 1.0, RB.RATIO_CAP],
                                 [1.0, 2.0, 1.0, 1.0]])
  assert RB.geo_mean([1.0, 100.0]) == pytest.approx(10.0)


def test_summary_over_tasks_and_groups(quad):
  c1 = {"A": {"reached": np.array([True, False]), "ratio": np.array([1., 4.])}}
  c2 = {"A": {"reached": np.array([True, True]), "ratio": np.array([2., 8.])}}
  s = RB.summarize({"x": c1, "y": c2}, ["x", "y"])
  assert s["A"][:2] == (3, 4)
  assert s["A"][2] == pytest.approx(64 ** 0.25)
  assert RB.group_of("regression") == "tuning"
  assert RB.group_of("char_lm") == "held-out"
  assert RB.group_of("drift_regression") == "held-out"


def test_per_task_figure_is_each_tasks_geo_mean_and_composes():
  c1 = {"A": {"reached": np.array([True, False]), "ratio": np.array([1., 4.])},
        "B": {"reached": np.array([True, True]), "ratio": np.array([1., 1.])}}
  c2 = {"A": {"reached": np.array([True, True]), "ratio": np.array([2., 8.])}}
  rows, cols = RB.per_task_rows({"x": c1, "y": c2}, ["x", "y"], ["A", "B"])
  assert cols == ["method", "x", "y"]
  assert rows[0] == {"method": "A", "x": "2", "y": "4"}
  assert rows[1] == {"method": "B", "x": "1", "y": "—"}
  # Equal cells per task: the overall figure is the tasks' geometric mean.
  overall = RB.summarize({"x": c1, "y": c2}, ["x", "y"])["A"][2]
  assert overall == pytest.approx((2 * 4) ** 0.5)


def test_default_tasks_pick_up_drift_tasks():
  names = RB.default_tasks()
  assert names[:len(RB.BASE_TASKS)] == list(RB.BASE_TASKS)
  for n in T.names():
    if n.startswith("drift_") or n == "resnet_digits":
      assert n in names


def test_write_section_between_markers(tmp_path, monkeypatch):
  md = tmp_path / "RESULTS.md"
  md.write_text("# Results\n\nintro\n\n## First\n\nbody\n")
  monkeypatch.setattr(RB, "RESULTS_MD", md)
  RB.write_section(f"{RB.BEGIN}\none\n{RB.END}")
  RB.write_section(f"{RB.BEGIN}\ntwo\n{RB.END}")
  text = md.read_text()
  assert text.count(RB.BEGIN) == 1 and "two" in text and "one" not in text
  assert text.index(RB.END) < text.index("## First")


# ---- the registry's start knobs --------------------------------------------


def test_every_method_has_seven_ascending_starts():
  for name in O.names():
    spec = O.get(name)
    g = np.asarray(spec.start_grid)
    assert g.shape == (7,), name
    assert spec.start_name and spec.start_default > 0, name
    if name != "cocob":  # cocob's alpha descends (its first step 1/alpha rises)
      assert np.all(np.diff(g) > 0), name


def test_documented_ranges():
  adam = np.logspace(-5, 0, 7)
  for name in ("adamw", "adam", "ae_adam", "ae_adamw", "adamw_plateau",
               "schedule_free_adamw", "mechanize_adam", "tox_spsa",
               "ae_adamw-no_hypergradient", "adamw_cosine"):
    np.testing.assert_allclose(O.get(name).start_grid, adam, rtol=1e-12,
                               err_msg=name)
  rel = np.logspace(-2, 3, 7)
  np.testing.assert_allclose(O.get("sgdm").start_grid, 1e-2 * rel)
  np.testing.assert_allclose(O.get("ae_sgdm").start_grid, 0.1 * rel)
  np.testing.assert_allclose(np.asarray(O.get("ae_sgdm").start_grid)[[0, -1]],
                             [1e-3, 100.0])
  est = np.logspace(-2, 4, 7)
  for name in ("prodigy", "dadapt_adamw", "dog"):
    assert O.get(name).start_default == 1e-6
    np.testing.assert_allclose(O.get(name).start_grid, 1e-6 * est)
  np.testing.assert_allclose(O.get("cocob").start_grid, (100 * est)[::-1])
  lo, hi = O.get("tox_spsa").windowed["bounds"]
  assert lo <= min(adam) and max(adam) <= hi
  # every default method of the sweep is registered and builds at a start
  for name in RB.DEFAULT_METHODS:
    spec = O.get(name)
    assert spec.at_start(spec.start_grid[3], 10) is not None


# ---- the grid runner ---------------------------------------------------------


@pytest.mark.parametrize("name", ["adamw", "prodigy"])
def test_grid_vmapped_equals_one_run_per_start(quad, name):
  spec = O.get(name)
  starts = spec.start_grid[2:4]
  g = R.run_grid(quad, spec, starts, [1, 2], traced=True)
  assert g.mode == "vmapped"
  assert g.metric.shape == (2, 2, 3) and g.loss.shape == (2, 2, 20)
  for k, v in enumerate(starts):
    r = R.run(quad, spec.start_spec(), [1, 2], learning_rate=v,
              eval_loss=True)
    np.testing.assert_allclose(g.metric[k], r.metric, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g.held_out_loss[k], r.held_out_loss,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g.loss[k], r.loss, rtol=1e-5, atol=1e-7)


def test_run_eval_loss_is_additive(quad):
  plain = R.run(quad, "sgdm", [1])
  both = R.run(quad, "sgdm", [1], eval_loss=True)
  assert plain.held_out_loss is None
  np.testing.assert_array_equal(plain.metric, both.metric)
  # quadratic: eval_loss is the metric
  np.testing.assert_allclose(both.held_out_loss, both.metric)


@pytest.mark.parametrize("name", ["ae_sgdm", "ae_adamw"])
def test_ae_traced_start_equals_the_run_started_there(quad, name):
  # A traced start runs the preset at its default rate followed by a scale
  # of start / default (optimizers._ae): the same trajectory as the preset
  # started at that rate, since Ω, the warm start and the brake are relative
  # to α0 and the step-size law reads cosines.
  spec = O.get(name)
  starts = [spec.start_grid[0], spec.start_grid[-1]]
  g = R.run_grid(quad, spec, starts, [1, 2], traced=True)
  assert g.mode == "vmapped"
  for k, v in enumerate(starts):
    r = R.run(quad, spec, [1, 2], learning_rate=v, eval_loss=True)
    np.testing.assert_allclose(g.metric[k], r.metric, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g.loss[k], r.loss, rtol=1e-4, atol=1e-7)


def test_refused_traced_start_falls_back_to_the_loop(quad):
  # A factory that needs a concrete start (float() of a tracer raises): the
  # grid runner falls back to one run per start, with the same results.
  base = O.get("adamw")
  spec = dataclasses.replace(
      base, name="concrete_adamw",
      start_factory=lambda s, n: base.factory(float(s), n))
  starts = base.start_grid[2:4]
  g = R.run_grid(quad, spec, starts, [1, 2])
  assert g.mode == "loop" and "traced start refused" in g.note
  ref = R.run_grid(quad, base, starts, [1, 2], traced=True)
  np.testing.assert_allclose(g.metric, ref.metric, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g.held_out_loss, ref.held_out_loss, rtol=1e-5,
                             atol=1e-7)


def test_windowed_peer_falls_back_to_the_loop(quad):
  pytest.importorskip("tensor_optix")
  spec = O.get("tox_spsa")
  starts = spec.start_grid[2:4]
  g = R.run_grid(quad, spec, starts, [1])
  assert g.mode == "loop" and "windowed" in g.note
  assert np.all(np.isfinite(g.metric))


def test_epoch_sampling_builds_renamed_tasks_and_writes_nothing(tmp_path,
                                                                monkeypatch):
  """``--sampling epochs``: the tasks with a training set are built drawing
  shuffled epochs, under their own names (their own cache files); the others
  are refused by name; the run only prints."""
  task = RB.build_task("regression", "quick", "epochs")
  assert task.name == "regression_epochs"
  assert RB.build_task("resnet_digits", "quick", "epochs").name == (
      "resnet_digits_epochs")
  assert RB.build_task("regression", "quick").name == "regression"
  with pytest.raises(ValueError, match="quadratic"):
    RB.build_task("quadratic", "quick", "epochs")
  md = tmp_path / "RESULTS.md"
  md.write_text("x\n<!-- robustness:begin -->\nold\n<!-- robustness:end -->\n")
  monkeypatch.setattr(RB, "RESULTS_MD", md)
  monkeypatch.setattr(RB, "CACHE", tmp_path / "cache")
  monkeypatch.setattr(RB, "_commit", lambda: None)
  assert RB.main(["--tasks", "regression,quadratic", "--methods", "ae_adam",
                  "--sampling", "epochs", "--report-only"]) == 0
  assert "old" in md.read_text()


def test_epochs_specs_are_told_the_tasks_epoch_length():
  """``<preset>@epochs`` passes the task's batches per epoch to the preset
  (``None``, the preset's default, on a task drawn with replacement), and
  on a task in shuffled epochs it trains differently from the preset."""
  kw = dict(n_train=256, batch_size=32, steps=50, eval_every=25)
  epochs = T.get("regression", sampling="epochs", **kw)
  drawn = T.get("regression", **kw)
  assert (epochs.batches_per_epoch, drawn.batches_per_epoch) == (8, None)
  spec = O.get("ae_adam@epochs")
  assert spec.per_epoch and not O.get("ae_adam").per_epoch
  for task, b in ((epochs, 8), (drawn, None)):
    told = spec.for_task(task)
    assert not told.per_epoch and told.factory.keywords == {
        "batches_per_epoch": b}
  assert O.get("adamw").for_task(epochs) is O.get("adamw")
  loss = {m: R.run(epochs, m, [1]).loss for m in ("ae_adam", "ae_adam@epochs")}
  assert not np.allclose(loss["ae_adam"], loss["ae_adam@epochs"])
