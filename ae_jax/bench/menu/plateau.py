"""Experiment 11: plateau escape (the noise law AE-4).

The theory (§10 prediction 4, menu item 11): "relative stalls increase σ;
high V_t decreases it — yielding faster escape from plateaus without
blow-ups", measured as the exit time from a flat region with the σ-law on
and off, and the instability incidents.

**The landscape** (task ``plateau``, registered here in the harness's task
registry): a student-teacher regression through a *clipped* sigmoid,
``jax.nn.hard_sigmoid(z) = clip((z + 3) / 6, 0, 1)``. The teacher is
``y = hard_sigmoid(x U) v + ε`` (4 units, ``x ~ N(0, I_8)``); the student a
``8-16-1`` network of the same units started *in saturation*: hidden biases
``-3 - margin`` and small input weights, so every training pre-activation
lies below ``-3``, where the clipped sigmoid is exactly flat. At the start
the gradient of every weight is exactly zero (only the output bias sees the
minibatch mean of the centred targets): the held-out loss sits at its
plateau level ``E[y²]`` (the constant predictor) and no gradient method can
leave it. Leaving it takes exploration: parameter noise moves the hidden
units until some pre-activations cross ``-3``, and from there the gradient
fits the teacher (the noise floor is ``0.05² = 0.0025``).

**Exit time**: the first evaluation step (every 10 steps) at which the
held-out loss falls below ``EXIT_FRACTION = 0.5`` of the plateau level
(between the plateau and the solution). **Incidents**: a *relapse* (the
held-out loss back above the exit threshold at a later evaluation), a
divergence (:func:`ae_jax.bench.metrics.diverged`: a training loss above 10x
the first, or non-finite) and non-finite losses; the oscillation of the
training loss (:func:`ae_jax.bench.metrics.oscillation`) is reported beside.

**Methods**, each with the same initialisation, minibatches and budget per
seed (seeds 1..N, :func:`ae_jax.bench.runner.run`): the peers ``adamw``,
``prodigy`` and ``mechanize_adam`` (no noise); ``ae_adamw`` as shipped
(σ = 0: no noise); ``ae_adamw(sigma=σ0)`` with the noise law knocked out
(``canonical_laws(..., noise=False)``: σ stays at σ0, the law's "off" at the
same start); the same with σ fixed at ``10 σ0`` (the level the law reaches
around its exits: does the law add anything over a larger constant?); and
``ae_adamw(sigma=σ0)`` with the law on (σ ∈ [1e-3 σ0, 100 σ0], the presets'
Ω). The presets seed their noise key statically (every seed would draw
the same ξ_t); :func:`reseeded` gives each seed its own stream, keyed by the
seed's initial parameters, so the seeds are independent draws.
"""

from __future__ import annotations

import inspect
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ae_jax as ae
from ae_jax.bench import menu
from ae_jax.bench import metrics as M
from ae_jax.bench import optimizers as O
from ae_jax.bench import report
from ae_jax.bench import runner as R
from ae_jax.bench import tasks as T

EXIT_FRACTION = 0.5   # exit threshold = this x the plateau level
SIGMA0 = 1e-3         # σ0 of the noisy AE variants
STEPS = 1000          # quick-profile budget (x profile["scale"])


def _plateau_data(dim, teacher_units, noise, n, data_seed):
  rng = np.random.default_rng(data_seed)
  u = rng.normal(size=(dim, teacher_units)) * 3.0 / math.sqrt(dim)
  v = rng.normal(size=(teacher_units,))
  x = rng.normal(size=(n, dim))
  h = np.clip((x @ u + 3.0) / 6.0, 0.0, 1.0)
  y = h @ v + noise * rng.normal(size=(n,))
  return x.astype(np.float32), y.astype(np.float32)


@T.register("plateau")
def plateau_task(steps: int = STEPS, dim: int = 8, hidden: int = 16,
                 teacher_units: int = 4, noise: float = 0.05,
                 margin: float = 2.0, gain: float = 0.25,
                 batch_size: int = 128, n_train: int = 2048,
                 n_test: int = 1024, data_seed: int = 0,
                 eval_every: int = 10) -> T.Task:
  """Clipped-sigmoid regression started on its plateau (module docstring).

  ``margin``: how far below the clipped sigmoid's edge (-3) the hidden
  biases start; ``gain``: the input weights' scale (``gain / sqrt(dim)``
  per entry). The target (``Task.target``) is the exit threshold
  ``EXIT_FRACTION`` x the plateau level; ``dict(task.config)`` holds
  ``plateau_level``.
  """
  x, y = _plateau_data(dim, teacher_units, noise, n_train + n_test,
                       data_seed)
  y = y - y[:n_train].mean()  # centred: the output bias starts at its optimum
  xtr, ytr = jnp.asarray(x[:n_train]), jnp.asarray(y[:n_train])
  xte, yte = jnp.asarray(x[n_train:]), jnp.asarray(y[n_train:])
  level = float(np.mean(y[n_train:] ** 2))

  def forward(params, xb):
    h = jax.nn.hard_sigmoid(xb @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]

  def loss(params, batch):
    xb, yb = batch
    return jnp.mean((forward(params, xb) - yb) ** 2)

  def metric(params):
    return loss(params, (xte, yte))

  def init(key):
    k1, k2 = jax.random.split(key)
    return {"w1": gain * jax.random.normal(k1, (dim, hidden)) / math.sqrt(dim),
            "b1": jnp.full((hidden,), -3.0 - margin),
            "w2": jax.random.normal(k2, (hidden,)) / math.sqrt(hidden),
            "b2": jnp.zeros(())}

  def batch(key, step):
    idx = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0,
                             n_train)
    return xtr[idx], ytr[idx]

  return T.Task(
      name="plateau", init=init, batch=batch, loss=loss, metric=metric,
      eval_loss=metric, target=EXIT_FRACTION * level,
      metric_name="test MSE", steps=steps, eval_every=eval_every,
      description=(f"clipped-sigmoid student {dim}-{hidden}-1 started in "
                   f"saturation (hidden biases {-3.0 - margin:g}, input "
                   f"weights {gain:g}/√{dim} N(0,1)) on a {teacher_units}-"
                   f"unit teacher + {noise:g}N(0,1), batch {batch_size}: "
                   "exactly zero gradient at the start"),
      config=(("plateau_level", level), ("margin", margin)))


def reseeded(tx) -> optax.GradientTransformationExtraArgs:
  """``tx`` whose AE noise key is drawn from the initial parameters.

  The presets key their noise ξ_t with a static seed, so a ``vmap`` over
  seeds would draw the same noise for every seed. Here the key is folded
  with the bits of the first parameter entry, which differs per seed (the
  runner initialises each seed from its own key).
  """

  def init_fn(params):
    leaf = jnp.ravel(jax.tree.leaves(params)[0])[0].astype(jnp.float32)
    salt = jax.lax.bitcast_convert_type(leaf, jnp.uint32)
    key = jax.random.fold_in(jax.random.PRNGKey(0), salt)
    return ae.reseed(tx.init(params), key)

  return optax.GradientTransformationExtraArgs(init_fn, tx.update)


def noisy_ae(name: str, sigma: float, law: bool) -> O.OptSpec:
  """``ae_adamw(sigma=sigma)`` with the noise law on or knocked out."""

  def factory(learning_rate, steps, sigma=sigma, law=law):
    del steps
    kw = {} if law else {"laws_chain": ae.canonical_laws(
        O.AE_NAMES["ae_adamw"], noise=False)}
    return reseeded(ae.ae_adamw(learning_rate, sigma=sigma, **kw))

  return O.OptSpec(name, factory, 1e-3, needs_value=True, is_ae=True,
                   family="adamw",
                   description=f"ae.ae_adamw(sigma={sigma:g}), noise law "
                               f"{'on' if law else 'off'}")


def methods(sigma0: float = SIGMA0) -> dict[str, O.OptSpec]:
  """Label -> spec, in the table's order (module docstring)."""
  return {
      "adamw": O.get("adamw"),
      "prodigy": O.get("prodigy"),
      "mechanize_adam": O.get("mechanize_adam"),
      "ae_adamw (σ = 0)": O.get("ae_adamw"),
      f"ae_adamw, σ fixed {sigma0:g} (law off)": noisy_ae(
          "ae_adamw_sigma_fixed", sigma0, False),
      f"ae_adamw, σ fixed {10 * sigma0:g} (law off)": noisy_ae(
          "ae_adamw_sigma_fixed10", 10 * sigma0, False),
      f"ae_adamw, σ law from {sigma0:g}": noisy_ae(
          "ae_adamw_sigma_law", sigma0, True),
  }


def exit_steps(metric, eval_steps, threshold):
  """First evaluation step with ``metric <= threshold`` (``nan``: never)."""
  return M.time_to_target(metric, eval_steps, threshold)


def relapsed(metric, threshold):
  """Whether the curve, after first reaching ``threshold``, is above it (or
  non-finite) at a later evaluation; ``False`` where it never exited."""
  m = np.asarray(metric, float)
  with np.errstate(invalid="ignore"):
    below = np.isfinite(m) & (m <= threshold)
  first = np.where(below.any(-1), np.argmax(below, -1), m.shape[-1])
  after = np.arange(m.shape[-1]) > first[..., None]
  with np.errstate(invalid="ignore"):
    above = ~np.isfinite(m) | (m > threshold)
  return np.any(after & above, axis=-1)


def at_exit(coef, eval_steps, exits):
  """``coef[s, exit step - 1]`` per seed (``nan`` where it never exited)."""
  coef = np.asarray(coef, float)
  out = np.full(coef.shape[0], np.nan)
  for i, e in enumerate(np.asarray(exits, float)):
    if np.isfinite(e):
      out[i] = coef[i, max(int(e) - 1, 0)]
  return out


def summarise(res: R.Result, threshold: float) -> dict:
  """Per-seed arrays of one method's run."""
  exits = exit_steps(res.metric, res.eval_steps, threshold)
  out = {"exit": exits, "final": M.final(res.metric),
         "relapse": relapsed(res.metric, threshold),
         "diverged": M.diverged(res.loss), "nonfinite": M.nonfinite(res.loss),
         "oscillation": M.oscillation(res.loss, skip=res.steps // 10),
         "sigma": res.coefficients.get("sigma")}
  if out["sigma"] is not None:
    out["sigma_exit"] = at_exit(out["sigma"], res.eval_steps, exits)
    out["sigma_final"] = out["sigma"][:, -1]
  return out


def _count(flags) -> str:
  flags = np.asarray(flags, bool)
  return f"{int(flags.sum())}/{flags.size}"


def _row(label: str, s: dict) -> dict:
  exited = np.isfinite(s["exit"])
  incidents = s["relapse"] | s["diverged"] | (s["nonfinite"] > 0)
  row = {"method": label, "exited": _count(exited),
         "exit step": M.fmt_ci(s["exit"], 3) if exited.any() else "never",
         "final test MSE": M.fmt_ci(s["final"], 3),
         "relapsed": _count(s["relapse"]),
         "diverged / non-finite": (f"{_count(s['diverged'])} / "
                                   f"{int(np.sum(s['nonfinite']))}"),
         "incidents": _count(incidents),
         "oscillation": M.fmt_ci(s["oscillation"], 3)}
  if s["sigma"] is not None and np.any(s["sigma"] > 0):
    row["σ at exit"] = (M.fmt_ci(s["sigma_exit"], 2) if exited.any()
                        else "—")
    row["σ final"] = M.fmt_ci(s["sigma_final"], 2)
  else:
    row["σ at exit"] = row["σ final"] = "0"
  return row


COLUMNS = ("method", "exited", "exit step", "final test MSE", "relapsed",
           "diverged / non-finite", "incidents", "oscillation", "σ at exit",
           "σ final")


def noise_drive(task: T.Task, spec: O.OptSpec, seed: int,
                steps: int) -> dict:
  """The four terms of the noise law's drive u_σ along one seed's run.

  Replays the runner's run of ``spec`` on ``task`` for ``seed`` (same
  initialisation and minibatches) and records, every step, κ_s·stall,
  κ_u S/S*, -κ_v V/V* and κ_a (A - A*) with the canonical gains
  (:data:`ae_jax.presets.CANONICAL_NOISE`) and the law's stall threshold.
  """
  defaults = inspect.signature(ae.laws.noise).parameters
  tau_t = defaults["stall_threshold"].default
  a_star = defaults["quality_target"].default
  k = ae.presets.CANONICAL_NOISE
  tx = spec.factory(spec.default_lr, steps)
  k_init, k_data = jax.random.split(jax.random.PRNGKey(seed))

  def step(carry, t):
    params, state = carry
    loss, grads = jax.value_and_grad(task.loss)(params,
                                                task.batch(k_data, t))
    updates, state = tx.update(grads, state, params, value=loss)
    s = ae.signals(state)
    stalled = jnp.abs(s["T"]) < tau_t * jnp.sqrt(s["V_star"])
    terms = {"stall": k["stall"] * stalled.astype(jnp.float32),
             "uncertainty": k["uncertainty"] * s["S"] / s["S_star"],
             "instability": -k["instability"] * s["V"] / s["V_star"],
             "quality": k["quality"] * (0.5 * (s["rho"] + 1.0) - a_star)}
    return (optax.apply_updates(params, updates), state), terms

  params = task.init(k_init)
  _, terms = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(steps)))(
      (params, tx.init(params)))
  return {n: np.asarray(v, float) for n, v in terms.items()}


def _censored(exits, budget):
  """Exit steps with "never" counted as ``budget`` (a lower bound)."""
  e = np.asarray(exits, float)
  return np.where(np.isfinite(e), e, float(budget))


def _paired(a, b):
  d = np.asarray(a, float) - np.asarray(b, float)
  mean, half, _ = M.t_interval(d)
  return M.fmt_ci(d, 3), mean - half, mean + half


def _predictions(summ: dict, labels: list, budget: int) -> list[dict]:
  zero, fixed, fixed10, law = labels[3:7]
  s_law = summ[law]
  n = len(s_law["exit"])
  exited = np.isfinite(s_law["exit"])
  ratio = np.log10(np.where(exited, s_law["sigma_exit"],
                            s_law["sigma_final"]) / SIGMA0)
  lo = M.t_interval(ratio)
  preds = [{
      "prediction": "Noise law (AE-4): σ rises on a relative stall (the "
                    "plateau)",
      "measured": (f"log10(σ/σ0) at the exit (at the end where none): "
                   f"{M.fmt_ci(ratio, 3)}; above σ0 on "
                   f"{int(np.sum(ratio > 0))}/{n} seeds"),
      "verdict": "holds" if lo[0] - lo[1] > 0 else "fails"}]
  d_fixed = _paired(_censored(s_law["exit"], budget),
                    _censored(summ[fixed]["exit"], budget))
  d_zero = _paired(_censored(s_law["exit"], budget),
                   _censored(summ[zero]["exit"], budget))
  d_10 = _paired(_censored(s_law["exit"], budget),
                 _censored(summ[fixed10]["exit"], budget))
  preds.append({
      "prediction": "Noise law: faster plateau exit with the law than with "
                    "it off (σ fixed at σ0; σ = 0)",
      "measured": (f"exited {_count(exited)} vs "
                   f"{_count(np.isfinite(summ[fixed]['exit']))} (σ0 fixed) "
                   f"and {_count(np.isfinite(summ[zero]['exit']))} "
                   f"(σ = 0); exit step, never = {budget}: law − σ0 fixed "
                   f"{d_fixed[0]}, law − σ = 0 {d_zero[0]} (law − 10σ0 "
                   f"fixed {d_10[0]})"),
      "verdict": "holds" if d_fixed[2] < 0 and d_zero[2] < 0 else "fails"})
  inc = {k: summ[k]["relapse"] | summ[k]["diverged"]
         | (summ[k]["nonfinite"] > 0) for k in (law, fixed, fixed10)}
  preds.append({
      "prediction": "Noise law: the faster exit comes without more "
                    "instability incidents (relapse above the exit "
                    "threshold, divergence, non-finite loss)",
      "measured": (f"incidents: law {_count(inc[law])}, σ0 fixed "
                   f"{_count(inc[fixed])}, 10σ0 fixed {_count(inc[fixed10])}"
                   f"; final test MSE law {M.fmt_ci(s_law['final'], 3)} vs "
                   f"10σ0 fixed {M.fmt_ci(summ[fixed10]['final'], 3)}"),
      "verdict": ("holds" if inc[law].sum() <= inc[fixed].sum()
                  and inc[law].sum() <= inc[fixed10].sum() else "fails")})
  drop = np.log10(s_law["sigma_final"][exited] / s_law["sigma_exit"][exited])
  ci = M.t_interval(drop)
  preds.append({
      "prediction": "Noise law: σ falls again once the loss moves (high V "
                    "after the exit)",
      "measured": ("log10(σ_final / σ_exit) over the seeds that exited: "
                   + (M.fmt_ci(drop, 3) if drop.size else "— (none)")),
      "verdict": ("holds" if drop.size and ci[0] + ci[1] < 0 else "fails")})
  return preds


def _smooth(x, window=25):
  return np.convolve(x, np.ones(window) / window, mode="same")


def _figure(results: dict, summ: dict, threshold: float, level: float,
            drive: dict, figures: str) -> str:
  plt = report._plt()  # pylint: disable=protected-access
  os.makedirs(figures, exist_ok=True)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4))
  for label, res in results.items():
    line, = axes[0].plot(res.eval_steps, np.median(res.metric, 0),
                         label=label, lw=1.2)
    sig = summ[label]["sigma"]
    if sig is None or not np.any(sig > 0):
      continue
    steps = np.arange(1, sig.shape[1] + 1)
    for i in range(sig.shape[0]):
      axes[1].plot(steps, sig[i], color=line.get_color(), lw=0.8,
                   alpha=0.8, label=label if i == 0 else None)
    e = summ[label]["exit"]
    ok = np.isfinite(e)
    axes[1].scatter(e[ok], summ[label]["sigma_exit"][ok], color=
                    line.get_color(), marker="o", s=18, zorder=3)
  axes[0].axhline(threshold, color="k", ls="--", lw=0.8,
                  label=f"exit threshold ({EXIT_FRACTION:g} x plateau)")
  axes[0].axhline(level, color="gray", ls=":", lw=0.8, label="plateau level")
  axes[0].set(yscale="log", xlabel="step", title="held-out MSE (median "
              "over seeds)")
  axes[1].set(yscale="log", xlabel="step", title="σ per seed (dots: exit)")
  terms = drive["terms"]
  for name, v in terms.items():
    axes[2].plot(_smooth(v), lw=1, label=name)
  axes[2].plot(_smooth(sum(terms.values())), color="k", lw=1.5,
               label="u_σ (sum)")
  if np.isfinite(drive["exit"]):
    axes[2].axvline(drive["exit"], color="gray", ls="--", lw=0.8,
                    label="exit")
  axes[2].set(xlabel="step", title=f"noise-law drive terms, seed "
              f"{drive['seed']} (25-step mean)")
  for ax in axes:
    ax.legend(fontsize=7)
  return menu.save_figure(fig, figures, "exp11_plateau_sigma.png")


def _protocol(task: T.Task, seeds: list, level: float) -> str:
  return (
      f"Task `plateau` (registered by `ae_jax/bench/menu/plateau.py`): "
      f"{task.description}. "
      f"Plateau level (held-out MSE of the starting, constant predictor) "
      f"{level:.4f}; exit = first evaluation (every {task.eval_every} "
      f"steps) with held-out MSE ≤ {EXIT_FRACTION:g} x that = "
      f"{task.target:.4f}; noise floor 0.0025. {task.steps} steps, seeds "
      f"{seeds[0]}..{seeds[-1]}, each with the same initialisation, "
      "minibatches and budget for every method (`ae_jax.bench.runner.run`,"
      " jitted, vmapped over seeds); each noisy AE seed draws its own "
      "noise. Peers at their defaults; `ae_adamw` at α0 = 1e-3 with "
      f"σ0 = {SIGMA0:g} (law on: σ ∈ [1e-3 σ0, 100 σ0], the presets' Ω; "
      "law off: `canonical_laws(..., noise=False)`). Incidents: a relapse "
      "(held-out MSE back above the threshold after the exit), a "
      "divergence (a training loss above 10x the first, or non-finite) or "
      "a non-finite loss. Cells: mean ± 95% t-interval over seeds (exit "
      "step over the seeds that exited, k/N when not all did); "
      "oscillation = RMS of log training loss around its 25-step moving "
      "average, after the first 10% of steps.")


def _reading(summ: dict, labels: list) -> str:
  """The law against the constant-σ control, in numbers."""
  fixed10, law = summ[labels[5]], summ[labels[6]]
  budget = len(law["sigma"][0])
  better = (np.mean(_censored(fixed10["exit"], budget))
            < np.mean(_censored(law["exit"], budget))
            and fixed10["relapse"].sum() <= law["relapse"].sum())
  verdict = ("a constant chosen at the level the law reaches near its exits "
             "does better on both counts here" if better else
             "the constant does not beat the law on both counts here")
  return (
      f"Against the constant control: σ fixed at 10 σ0 exits on "
      f"{_count(np.isfinite(fixed10['exit']))} seeds at step "
      f"{M.fmt_ci(fixed10['exit'], 3)} with "
      f"{_count(fixed10['relapse'])} relapses (final test MSE "
      f"{M.fmt_ci(fixed10['final'], 3)}); the law exits on "
      f"{_count(np.isfinite(law['exit']))} at {M.fmt_ci(law['exit'], 3)} "
      f"with {_count(law['relapse'])} relapses (final "
      f"{M.fmt_ci(law['final'], 3)}). So the law's faster exit is relative "
      f"to its own start (σ0, or no noise); {verdict}.")


def _drive_note(drive: dict) -> str:
  """What drove σ on seed ``drive['seed']``, before and after its exit."""
  terms = drive["terms"]
  n = len(terms["stall"])
  cut = int(drive["exit"]) if np.isfinite(drive["exit"]) else n
  total = sum(terms.values())

  def part(sl):
    if sl.stop - sl.start <= 0:
      return "—"
    stall = np.mean(terms["stall"][sl] > 0)
    means = {k: float(np.mean(v[sl])) for k, v in terms.items()}
    return (f"stall gate on {100 * stall:.0f}% of steps, mean u_σ "
            f"{np.mean(total[sl]):+.3f} (stall {means['stall']:+.2f}, "
            f"S/S* {means['uncertainty']:+.2f}, V/V* "
            f"{means['instability']:+.2f}, quality {means['quality']:+.2f})")

  dip = ""
  if cut < n:
    window = _smooth(total)[cut:cut + 150]
    dip = (f" Right after the exit the 25-step mean of u_σ falls to "
           f"{window.min():+.2f} (V jumps above V*) and σ dips, until V* "
           "catches up.")
  return (f"Why σ moves (the σ-law run of seed {drive['seed']}, replayed "
          f"with its drive terms, figure right): before the exit (steps "
          f"0..{cut}) {part(slice(0, cut))}; after it {part(slice(cut, n))}."
          f"{dip} The stall test |T| < 0.25 √V* compares the loss trend "
          "with the minibatch noise, and V/V* and S/S* are relative to "
          "running references, so a descent and a converged fit read like "
          "the plateau: u_σ is positive on average and σ climbs to Ω's "
          "ceiling (100 σ0), where the added noise undoes the fit.")


@menu.register("11", "Experiment 11: plateau escape",
               "clipped-sigmoid regression started on a zero-gradient "
               "plateau: exit time and incidents with AE's noise law on/off "
               "against adamw, prodigy, mechanize")
def run(profile: dict, figures: str | None) -> dict:
  """Runs every method of :func:`methods` on seeds 1..N; see the module
  docstring."""
  scale = int(profile.get("scale", 1))
  seeds = list(range(1, int(profile["seeds"]) + 1))
  task = plateau_task(steps=STEPS * scale)
  level = dict(task.config)["plateau_level"]
  results = {lab: R.run(task, spec, seeds) for lab, spec in methods().items()}
  summ = {lab: summarise(r, task.target) for lab, r in results.items()}
  labels = list(results)
  rows = [_row(lab, summ[lab]) for lab in labels]
  law = labels[6]
  drive = {"seed": seeds[0], "exit": summ[law]["exit"][0],
           "terms": noise_drive(task, methods()[law], seeds[0], task.steps)}
  md = [_protocol(task, seeds, level), report.markdown_table(rows, COLUMNS),
        _drive_note(drive), _reading(summ, labels)]
  figs = []
  if figures is not None:
    figs.append(_figure(results, summ, task.target, level, drive, figures))
    md.append(f"![plateau](figures/{os.path.basename(figs[-1])})")
  return {"markdown": "\n\n".join(md),
          "predictions": _predictions(summ, labels, task.steps),
          "figures": figs}
