"""Experiment 14, AEONet: gated residual depth whose gates are AE coefficients.

The network (sklearn digits, 64 standardised pixels, 10 classes) is a stem,
``N`` gated residual blocks and a linear head::

  x_0 = relu(W_s p + b_s)
  x_{k+1} = x_k + g_k f_k(x_k),   f_k(x) = W2_k drop(relu(W1_k x + b1_k)) + b2_k
  logits = W_h x_N + b_h

The last layer ``W2_k`` of every block starts at zero (ReZero-like), so a
block is the identity until it is trained, and a gate opening never jolts
the function: a closed block (``g_k = 0``) receives no gradient and stays
the identity.

Design of the AE gates (one shared capacity coefficient, not one per gate):
every gate would see the same scalar signals (the loss trend ``T`` and its
variance ``V``), so ``N`` independent gate coefficients would move in
lockstep. The controller instead evolves one *capacity* ``c ∈ [0, N]``
(logit coordinates) and the gates are its staircase
``g_k = clip(c - k, 0, 1)``: the blocks open one after the other as ``c``
grows, and the deepest close first when it falls. ``sum_k g_k = c``, so the
capacity used is ``c / N``. The dropout rate ``p`` of the block hiddens is a
second coefficient. Both follow the theory's intent for exp. 14 (and the
curriculum law of ``tests/test_controller.py``): drive ``progress > 0``
(grow while the loss falls steadily), ``variance > 0`` (the centred
variance feature: shrink when ``V`` spikes above its reference ``V*``), no
leak (capacity is a ratchet, not a spring), evolve and a per-step budget on
``|Δz|``. The controller sees only the training minibatch loss; it
measures ``V`` around a fast loss mean (decay 0.9: the default 0.98 lags,
and a steadily falling loss then reads as variance) and holds the
coefficients for a 50-step warm-up while ``V*`` settles
(:func:`controller_step`). Closing a trained block changes the function, so
a shrink can feed the variance it answers; the budget bounds that loop.

Methods, with the same initialisation, data order, dropout masks and
budget per seed (seeds 1..N):

* ``aeonet``: capacity and dropout evolved by :func:`ae_jax.controller`,
  capacity starting at one block, dropout at 0.1;
* ``full``: fixed full depth (all gates 1), dropout 0.1;
* ``learned``: gates ``sigmoid(θ_k)`` trained by gradient with the weights
  (``θ_k = 0``: every gate starts at 0.5), dropout 0.1.

A disturbance probes "shrinks when the variance spikes": during steps
``[0.5, 0.55)`` of the budget half of every minibatch's labels are replaced
by random labels (the same corruption for every method). Metrics: held-out
(validation) accuracy at the end and the AUC of its curve (its time
average), capacity used (mean gate, averaged over training and at the end),
the mean gate against the training phase (figure), and the capacity's rise
before the burst and its fall during it. The whole training loop is one
``lax.scan`` (evaluation chunks of scanned steps) and is ``vmap``-ped over
seeds.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ae_jax as ae
from ae_jax.bench import menu
from ae_jax.bench import metrics as M
from ae_jax.bench import report

METHODS = ("aeonet", "full", "learned")
LABELS = {"aeonet": "AEONet (AE capacity + dropout)",
          "full": "full depth (gates 1)",
          "learned": "gates learned by gradient"}


class Config(NamedTuple):
  """Sizes and budget of one experiment (hashable: a static jit argument)."""

  n_blocks: int = 8
  width: int = 64
  hidden: int = 64
  batch_size: int = 32
  steps: int = 600
  eval_every: int = 20
  learning_rate: float = 1e-3
  dropout: float = 0.1
  capacity_init: float = 1.0
  eta: float = 0.03           # η of the capacity
  dropout_eta: float = 0.02   # η of the dropout rate
  max_step: float = 0.1       # budget: |Δz| per step
  warmup: int = 50            # steps the coefficients hold still
  loss_mean: float = 0.9      # decay of the loss mean that V is measured around
  burst: tuple = (0.5, 0.55)  # label-noise burst, fractions of the budget
  burst_fraction: float = 0.5
  n_train: int | None = None


def config(profile: dict) -> Config:
  """The :class:`Config` of a menu profile (``scale`` multiplies steps)."""
  scale = int(profile.get("scale", 1))
  return Config(steps=600 * scale, eval_every=20 * scale)


# -- the controller ------------------------------------------------------------


def capacity_controller(n_blocks: int, *, capacity_init=1.0, dropout=0.1,
                        eta=0.03, dropout_eta=0.02, max_step=0.1,
                        loss_mean=0.9) -> ae.Controller:
  """The AE controller of AEONet: coefficients ``capacity`` (in [0, N]) and
  ``dropout`` (in [0, 0.5]), both grown by progress and cut by variance.

  ``loss_mean`` is the decay of the loss mean around which ``V`` is measured
  (the library default 0.98 lags by ~50 steps, so a steadily falling loss
  reads as variance; 0.9 makes ``V`` the minibatch jitter).
  """
  gains = ae.laws.DriveGains(progress=1.0, variance=2.0, leak=0.0)
  return ae.controller(
      [ae.Coefficient("capacity", init=capacity_init, lower=0.0,
                      upper=float(n_blocks), param="logit"),
       ae.Coefficient("dropout", init=dropout, lower=0.0, upper=0.5,
                      param="logit")],
      optax.chain(
          ae.laws.drive({"capacity": gains, "dropout": gains}),
          ae.laws.evolve({"capacity": eta, "dropout": dropout_eta}),
          ae.laws.budget({"capacity": max_step, "dropout": max_step})),
      filters=ae.measurement.FilterConfig(loss_mean=loss_mean),
      step_size=None)


def controller_step(ctrl: ae.Controller, cstate, loss, step, warmup: int):
  """One controller update; for ``step < warmup`` the filters run but the
  coefficients hold (``V*`` is a ~100-step mean: before it has settled, the
  rise of ``V`` from 0 reads as a spike)."""
  _, new = ctrl.update(None, cstate, value=loss)
  hold = step < warmup
  keep = lambda old, cur: jnp.where(hold, old, cur)
  return new._replace(z=jax.tree.map(keep, cstate.z, new.z),
                      values=jax.tree.map(keep, cstate.values, new.values))


def staircase(capacity, n_blocks: int):
  """Gates ``g_k = clip(c - k, 0, 1)``: block k opens as c passes k."""
  return jnp.clip(capacity - jnp.arange(n_blocks, dtype=jnp.float32), 0.0,
                  1.0)


# -- the network ---------------------------------------------------------------


def init_params(key, cfg: Config, n_in: int = 64, n_out: int = 10) -> dict:
  """He-initialised stem, blocks (``W2 = 0``) and head; gate logits θ = 0.
  One flat normal draw, sliced (see :func:`_batch`)."""
  n, w, h = cfg.n_blocks, cfg.width, cfg.hidden
  shapes = ((n_in, w), (n, w, h), (w, n_out))
  z = jax.random.normal(key, (sum(math.prod(s) for s in shapes),))
  parts, start = [], 0
  for shape in shapes:
    size = math.prod(shape)
    parts.append(z[start:start + size].reshape(shape)
                 * math.sqrt(2.0 / shape[-2]))
    start += size
  return {
      "stem": {"w": parts[0], "b": jnp.zeros((w,))},
      "blocks": {"w1": parts[1], "b1": jnp.zeros((n, h)),
                 "w2": jnp.zeros((n, h, w)), "b2": jnp.zeros((n, w))},
      "head": {"w": parts[2] / math.sqrt(2.0), "b": jnp.zeros((n_out,))},
      "theta": jnp.zeros((n,)),
  }


def forward(params, x, gates, drop_rate, noise=None):
  """Logits of the gated residual net. With ``noise`` (uniforms of shape
  ``(N, batch, hidden)``), inverted dropout of rate ``drop_rate`` (may be
  traced) on the block hiddens: a unit is kept where ``noise < 1 - rate``."""
  h = jax.nn.relu(x @ params["stem"]["w"] + params["stem"]["b"])
  n, hidden = params["blocks"]["b1"].shape
  if noise is None:
    scale = jnp.ones((n, 1, hidden))
  else:
    keep = 1.0 - drop_rate
    scale = jnp.where(noise < keep, 1.0 / keep, 0.0)

  def block(h, inputs):
    b, g, s = inputs
    a = jax.nn.relu(h @ b["w1"] + b["b1"]) * s
    return h + g * (a @ b["w2"] + b["b2"]), None

  h, _ = jax.lax.scan(block, h, (params["blocks"], gates, scale))
  return h @ params["head"]["w"] + params["head"]["b"]


def _ce(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# -- training ------------------------------------------------------------------


def _batch(key, step, data, cfg: Config):
  """Minibatch and dropout uniforms of step ``step``, all from one uniform
  draw (each threefry draw is a large XLA program on CPU: one per step
  compiles several times faster); inside the burst, labels partly random."""
  xtr, ytr = data[0], data[1]
  b, n = cfg.batch_size, xtr.shape[0]
  u = jax.random.uniform(jax.random.fold_in(key, step),
                         (b * (3 + cfg.n_blocks * cfg.hidden),))
  pick = lambda v, k: jnp.minimum((v * k).astype(jnp.int32), k - 1)
  idx = pick(u[:b], n)
  x, y = xtr[idx], ytr[idx]
  lo, hi = (int(f * cfg.steps) for f in cfg.burst)
  burst = (step >= lo) & (step < hi)
  flip = burst & (u[b:2 * b] < cfg.burst_fraction)
  y = jnp.where(flip, pick(u[2 * b:3 * b], 10), y)
  return x, y, u[3 * b:].reshape(cfg.n_blocks, b, cfg.hidden)


def _gates_and_dropout(method, params, cstate, cfg: Config):
  """Gates and dropout rate of method index ``method`` (may be traced):
  only the selected branch carries a gradient (to θ for ``learned``)."""
  v = cstate.values
  ae_gates = staircase(v["capacity"], cfg.n_blocks)
  learned = jax.nn.sigmoid(params["theta"])
  gates = jnp.where(method == METHODS.index("aeonet"), ae_gates,
                    jnp.where(method == METHODS.index("learned"), learned,
                              1.0))
  rate = jnp.where(method == METHODS.index("aeonet"), v["dropout"],
                   cfg.dropout)
  return gates, rate


def train(method, cfg: Config, data, seed):
  """Trains one seed of method ``METHODS[method]`` (an index, may be
  traced: one compiled program serves every method); returns the per-step
  mean gate, dropout rate and loss, and the held-out accuracy at step 0 and
  after every ``eval_every`` steps."""
  kinit, kdata = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(kinit, cfg, data[0].shape[1])
  opt = optax.adam(cfg.learning_rate)
  ctrl = capacity_controller(cfg.n_blocks, capacity_init=cfg.capacity_init,
                             dropout=cfg.dropout, eta=cfg.eta,
                             dropout_eta=cfg.dropout_eta,
                             max_step=cfg.max_step, loss_mean=cfg.loss_mean)

  def loss_fn(params, cstate, x, y, noise):
    gates, rate = _gates_and_dropout(method, params, cstate, cfg)
    return _ce(forward(params, x, gates, rate, noise), y)

  def step_fn(carry, step):
    params, ostate, cstate = carry
    x, y, noise = _batch(kdata, step, data, cfg)
    gates, rate = _gates_and_dropout(method, params, cstate, cfg)
    loss, grads = jax.value_and_grad(loss_fn)(
        params, cstate, x, y, noise)
    # θ's gradient is 0 unless the gates are learned, and Adam then leaves
    # it at 0; the controller runs for every method, only AEONet reads it.
    updates, ostate = opt.update(grads, ostate, params)
    params = optax.apply_updates(params, updates)
    cstate = controller_step(ctrl, cstate, loss, step, cfg.warmup)
    return (params, ostate, cstate), (jnp.mean(gates), rate, loss)

  def accuracy(params, cstate):
    gates, _ = _gates_and_dropout(method, params, cstate, cfg)
    logits = forward(params, data[2], gates, 0.0)
    return jnp.mean(jnp.argmax(logits, -1) == data[3])

  def chunk(carry, start):
    carry, traj = jax.lax.scan(step_fn, carry,
                               start + jnp.arange(cfg.eval_every))
    return carry, (traj, accuracy(carry[0], carry[2]))

  carry = (params, opt.init(params), ctrl.init())
  acc0 = accuracy(params, carry[2])
  starts = jnp.arange(0, cfg.steps, cfg.eval_every)
  _, ((gate, rate, loss), acc) = jax.lax.scan(chunk, carry, starts)
  flat = lambda a: a.reshape(-1)
  return {"gate": flat(gate), "dropout": flat(rate), "loss": flat(loss),
          "acc": jnp.concatenate([acc0[None], acc])}


def run_methods(cfg: Config, data, seeds, methods=METHODS) -> dict:
  """``method -> {name: array (seeds, ...)}``: :func:`train` jitted once and
  vmapped over every (method, seed) pair; the data is an argument, not a
  constant folded into the program."""
  return menu.run_vmapped(lambda m, s, d: train(m, cfg, d, s), methods,
                          METHODS, seeds, data)


def load(cfg: Config):
  """The digits splits as jnp arrays ``(x_train, y_train, x_val, y_val)``."""
  from ae_jax.bench import tasks
  return tuple(jnp.asarray(a) for a in tasks._digits(cfg.n_train))


# -- the report ----------------------------------------------------------------


def summarise(out: dict, cfg: Config) -> dict:
  """Per-seed metrics of one method of :func:`run_methods`."""
  eval_steps = np.arange(0, cfg.steps + 1, cfg.eval_every)
  lo, hi = (int(f * cfg.steps) for f in cfg.burst)
  gate = out["gate"]
  window = gate[:, lo:min(cfg.steps, hi + (hi - lo))]
  # Validation accuracy from the burst's start to one burst length after.
  around = (eval_steps >= lo) & (eval_steps <= hi + (hi - lo))
  return {
      "final": out["acc"][:, -1],
      "auc": M.auc(out["acc"], eval_steps),
      "capacity": gate.mean(-1),
      "capacity_end": gate[:, -1],
      "rise": gate[:, lo - 1] - gate[:, 0],
      "fall": gate[:, lo - 1] - window.min(-1),
      "dropout_end": out["dropout"][:, -1],
      "burst_min": out["acc"][:, around].min(-1),
  }


def _paired(a, b) -> tuple[str, float, float]:
  """``a - b`` per seed: formatted, mean and lower end of its 95% interval."""
  mean, half, _ = M.t_interval(np.asarray(a) - np.asarray(b))
  return M.fmt_ci(np.asarray(a) - np.asarray(b), 3), mean, mean - half


def _table(summ: dict) -> str:
  rows = [{"method": LABELS[m],
           "final val acc": M.fmt_ci(s["final"]),
           "val AUC": M.fmt_ci(s["auc"]),
           "worst val acc around the burst": M.fmt_ci(s["burst_min"]),
           "capacity (mean over training)": M.fmt_ci(s["capacity"], 3),
           "capacity (end)": M.fmt_ci(s["capacity_end"], 3),
           "dropout (end)": M.fmt_ci(s["dropout_end"], 3)}
          for m, s in summ.items()]
  return report.markdown_table(rows, tuple(rows[0]))


def _paired_line(summ: dict) -> str:
  ae_s, parts = summ["aeonet"], []
  for m in ("full", "learned"):
    d = {k: _paired(ae_s[k], summ[m][k])[0]
         for k in ("final", "auc", "burst_min")}
    parts.append(f"{LABELS[m]}: final {d['final']}, AUC {d['auc']}, worst "
                 f"around the burst {d['burst_min']}")
  return ("Paired per-seed differences, AEONet − baseline: "
          + "; ".join(parts) + ".")


def _predictions(summ: dict, cfg: Config) -> list[dict]:
  ae_s, preds = summ["aeonet"], []
  n = len(ae_s["rise"])
  rise_lo = M.t_interval(ae_s["rise"])
  fall_lo = M.t_interval(ae_s["fall"])
  preds.append({
      "prediction": "AEONet (exp. 14): capacity grows while progress is steady",
      "measured": (f"mean gate {cfg.capacity_init / cfg.n_blocks:.3f} at "
                   f"step 0, +{M.fmt_ci(ae_s['rise'], 3)} by the burst; "
                   f"rose on {int(np.sum(ae_s['rise'] > 0))}/{n} seeds"),
      "verdict": "holds" if rise_lo[0] - rise_lo[1] > 0 else "fails"})
  preds.append({
      "prediction": "AEONet (exp. 14): capacity shrinks when the variance "
                    "spikes (label-noise burst)",
      "measured": (f"mean gate falls by {M.fmt_ci(ae_s['fall'], 3)} in the "
                   f"burst; fell on {int(np.sum(ae_s['fall'] > 1e-4))}/{n} "
                   f"seeds"),
      "verdict": "holds" if fall_lo[0] - fall_lo[1] > 0 else "fails"})
  diffs = {m: _paired(ae_s["auc"], summ[m]["auc"]) for m in ("full",
                                                             "learned")}
  preds.append({
      "prediction": "AEONet (exp. 14): better val AUC than full depth and "
                    "than gradient-learned gates",
      "measured": "; ".join(f"AE − {LABELS[m]}: {d[0]}"
                            for m, d in diffs.items()),
      "verdict": ("holds" if all(d[2] > 0 for d in diffs.values())
                  else "fails")})
  return preds


def _figure(outs: dict, cfg: Config, figures: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(figures, exist_ok=True)
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
  phase = np.arange(cfg.steps) / cfg.steps
  eval_phase = np.arange(0, cfg.steps + 1, cfg.eval_every) / cfg.steps
  for m, out in outs.items():
    line, = axes[0].plot(phase, out["gate"].mean(0), label=LABELS[m])
    axes[1].plot(eval_phase, out["acc"].mean(0), color=line.get_color())
    axes[2].plot(phase, out["dropout"].mean(0), color=line.get_color())
  for ax in axes:
    ax.axvspan(*cfg.burst, color="0.85", zorder=0)
    ax.set_xlabel("training phase (fraction of the budget)")
  axes[0].set(title="mean gate (capacity used)", ylim=(0, 1.05))
  axes[1].set(title="validation accuracy", ylim=(0.5, 1.0))
  axes[2].set(title="dropout rate")
  axes[0].legend(fontsize=8)
  return menu.save_figure(fig, figures, "exp14_aeonet.png")


def _protocol(cfg: Config, data, seeds) -> str:
  lo, hi = (int(f * cfg.steps) for f in cfg.burst)
  return (
      f"Sklearn digits (standardised, {data[0].shape[0]} train / "
      f"{data[2].shape[0]} held-out validation), a stem 64→{cfg.width}, "
      f"{cfg.n_blocks} gated residual blocks x + g·W2 drop(relu(W1 x)) "
      f"(hidden {cfg.hidden}, W2 initialised at 0) and a linear head; Adam "
      f"{cfg.learning_rate:g}, batch {cfg.batch_size}, {cfg.steps} steps, "
      f"validation every {cfg.eval_every}; seeds {seeds[0]}..{seeds[-1]}, "
      "each with the same initialisation, minibatches and dropout masks for "
      "every method. AEONet: one AE capacity coefficient c ∈ [0, N] "
      "(gates g_k = clip(c − k, 0, 1), blocks open in turn; c from "
      f"{cfg.capacity_init:g}) and the dropout rate (from {cfg.dropout:g}), "
      "both driven by progress (+1) and the centred variance (−2), no "
      f"leak, budget |Δz| ≤ {cfg.max_step:g}, variance measured around a "
      f"fast loss mean (decay {cfg.loss_mean:g}), held for the first "
      f"{cfg.warmup} steps; the controller sees only the training minibatch "
      "loss. Baselines: all gates 1, and gates sigmoid(θ) learned with the "
      f"weights (from 0.5); dropout {cfg.dropout:g}. Steps {lo}–{hi}: "
      f"{cfg.burst_fraction:.0%} of each minibatch's labels random (the "
      "same for every method), the variance spike. Cells: mean ± 95% "
      "t-interval over seeds; AUC = time average of the validation "
      "accuracy curve; worst around the burst = lowest validation accuracy "
      f"from step {lo} to {hi + (hi - lo)}; capacity = mean gate "
      "(Σ g_k / N).")


@menu.register("14", "Experiment 14: AEONet, gated depth",
               "gated residual blocks with AE-evolved gates on digits")
def run(profile: dict, figures: str | None) -> dict:
  """Runs the three methods on seeds 1..N; see the module docstring."""
  cfg = config(profile)
  seeds = list(range(1, int(profile["seeds"]) + 1))
  data = load(cfg)
  outs = run_methods(cfg, data, seeds)
  summ = {m: summarise(o, cfg) for m, o in outs.items()}
  md = [_protocol(cfg, data, seeds), _table(summ), _paired_line(summ)]
  figs = []
  if figures is not None:
    figs.append(_figure(outs, cfg, figures))
    md.append(f"![aeonet](figures/{os.path.basename(figs[-1])})")
  return {"markdown": "\n\n".join(md),
          "predictions": _predictions(summ, cfg), "figures": figs}
