"""The ``ae-jax`` command line.

Each subcommand is registered by an ``_add_<name>(subparsers)`` function that
adds its parser and sets ``handler``; a new subcommand (``swarm``,
``machine``, ``compare``, ...) is one more such function listed in
:data:`SUBCOMMANDS`. Handlers import their heavy modules lazily so that
``ae-jax --help`` stays fast.

Usage::

  ae-jax demo                      # AE-AdamW vs AdamW on sklearn digits
  ae-jax demo --steps 500 --seeds 2 --out demo.png
  ae-jax machine                   # the AE machine: quadratic and tape
  ae-jax swarm                     # AE-Swarm: the reference example, 5 seeds
  ae-jax swarm --seeds 2 --rounds 2 --total-steps 400
  ae-jax swarm --spread --seeds 5  # the spread case vs Optuna, PBT, ...
  ae-jax compare --task regression --optimizers adamw,ae_adamw --seeds 5
  python -m ae_jax demo --no-plot
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def _positive_float(text: str) -> float:
  value = float(text)
  if not value > 0:
    raise argparse.ArgumentTypeError(f"must be positive, got {text}")
  return value


def _fraction(text: str) -> float:
  value = float(text)
  if not 0 <= value <= 1:
    raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
  return value


def _run_demo(args: argparse.Namespace) -> int:
  from ae_jax.bench import demo

  demo.run_demo(steps=args.steps, seeds=args.seeds, learning_rate=args.lr,
                target=args.target, out=None if args.no_plot else args.out,
                batch_size=args.batch_size, chunk=args.chunk,
                progress=not args.no_progress)
  return 0


def _add_demo(subparsers) -> None:
  p = subparsers.add_parser(
      "demo", help="AE-AdamW vs AdamW: an MLP on scikit-learn's digits",
      description=(
          "Trains a 64-64 MLP on scikit-learn's bundled digits with "
          "ae_jax.ae_adamw and optax.adamw at the same initial learning "
          "rate (same init and minibatch order per seed), prints final test "
          "accuracy with a 95%% t-interval, steps to a target test accuracy "
          "and the final train loss, and plots loss curves and the AE "
          "coefficient trajectories."))
  p.add_argument("--steps", type=_positive_int, default=1500,
                 help="optimizer steps per run (default: %(default)s)")
  p.add_argument("--seeds", type=_positive_int, default=3,
                 help="seeds per method (default: %(default)s)")
  p.add_argument("--lr", type=_positive_float, default=1e-3,
                 help="(initial) learning rate of both methods "
                      "(default: %(default)g)")
  p.add_argument("--target", type=_fraction, default=0.95,
                 help="test accuracy counted for 'steps to target' "
                      "(default: %(default)s)")
  p.add_argument("--out", default="ae_demo.png",
                 help="PNG to write (default: %(default)s)")
  p.add_argument("--no-plot", action="store_true",
                 help="skip the figure")
  p.add_argument("--batch-size", type=_positive_int, default=64,
                 help="minibatch size (default: %(default)s)")
  p.add_argument("--chunk", type=_positive_int, default=50,
                 help="steps per jitted scan chunk; test accuracy is "
                      "evaluated after each (default: %(default)s)")
  p.add_argument("--no-progress", action="store_true",
                 help="hide the progress bar")
  p.set_defaults(handler=_run_demo)


def _run_machine(args: argparse.Namespace) -> int:
  from ae_jax import machine

  machine.demo(every=args.every, max_steps=args.max_steps)
  return 0


def _add_machine(subparsers) -> None:
  p = subparsers.add_parser(
      "machine", help="the AE machine on the reference quadratic and the "
      "tape copy task",
      description=(
          "Runs ae.machine.run on the reference quadratic (until the "
          "default stationary-point predicate holds) and on the tape copy "
          "task, and prints the trajectory table the reference runner "
          "prints."))
  p.add_argument("--every", type=_positive_int, default=25,
                 help="print every N steps (default: %(default)s)")
  p.add_argument("--max-steps", type=_positive_int, default=400,
                 help="step budget of each run (default: %(default)s)")
  p.set_defaults(handler=_run_machine)


SPREAD_PROFILES = {"quick": dict(pop_size=8, steps=400, rounds=8),
                   "full": dict(pop_size=16, steps=3000, rounds=10)}


def _run_spread(args: argparse.Namespace) -> int:
  from ae_jax.bench import swarm_spread

  kw = dict(SPREAD_PROFILES[args.profile])
  if args.pop_size is not None:
    kw["pop_size"] = args.pop_size
  if args.steps is not None:
    kw["steps"] = args.steps
  try:
    figures = swarm_spread.compare_figures(
        tasks=args.tasks.split(","), settings=args.settings.split(","),
        seeds=range(args.seeds),
        beta=swarm_spread.DEFAULT_BETA if args.beta is None else args.beta,
        kappa=swarm_spread.DEFAULT_KAPPA if args.kappa is None
        else args.kappa, **kw,
        log=None if args.no_progress else print)
  except ValueError as e:
    print(f"ae-jax swarm --spread: {e}", file=sys.stderr)
    return 2
  # The primary figure last: every method's best checkpoint.
  print("\nFigure `final` (each method's best member or completed trial at "
        "the end of training):")
  print(swarm_spread.table(figures["final"]))
  print("\nFigure `best` (each method's lowest validation loss at any "
        "evaluation):")
  print(swarm_spread.table(figures["best"]))
  print(f"\nswarm/best-baseline final validation loss ratio: "
        f"{swarm_spread.ratio(figures['final']):.4g}")
  print(f"swarm/best-baseline best validation loss ratio: "
        f"{swarm_spread.ratio(figures['best']):.4g}")
  return 0


def _run_swarm(args: argparse.Namespace) -> int:
  from ae_jax.bench import swarm_demo

  if args.spread:
    return _run_spread(args)
  if args.pop_size is None:
    args.pop_size = 4
  try:
    swarm_demo.run_example(
        seeds=args.seeds, out=args.out, progress=not args.no_progress,
        pop_size=args.pop_size, rounds=args.rounds,
        total_steps=args.total_steps, min_steps=args.min_steps,
        beta=swarm_demo.REFERENCE_BETA if args.beta is None else args.beta,
        kappa=swarm_demo.REFERENCE_KAPPA if args.kappa is None
        else args.kappa,
        batch_size=args.batch_size,
        hidden=args.hidden)
  except ValueError as e:
    print(f"ae-jax swarm: {e}", file=sys.stderr)
    return 2
  return 0


def _add_swarm(subparsers) -> None:
  p = subparsers.add_parser(
      "swarm", help="AE-Swarm: the reference 4-member example vs "
      "independent AE runs and AdamW",
      description=(
          "Runs the reference AE-Swarm example (MLP 10-256-1 on y = Xw + "
          "0.1 eps, AdamW + AE, 4 members, 6 rounds of 4000 steps, beta 5, "
          "kappa 0.05) against 4 independent AE runs with the same compute "
          "and 4 plain AdamW runs, over several seeds, and prints the best "
          "and mean validation loss per round with 95%% intervals."))
  p.add_argument("--seeds", type=_positive_int, default=5,
                 help="seeds (data + initialisation) (default: %(default)s)")
  p.add_argument("--spread", action="store_true",
                 help="the spread case instead: 8 members over 4 decades of "
                      "rates (and spread beta1 / weight decay) on regression, "
                      "a digits CNN and a character LM, against independent "
                      "AE runs, Optuna with successive halving, PBT and the "
                      "best fixed rate in hindsight, at equal total steps")
  p.add_argument("--profile", choices=sorted(SPREAD_PROFILES),
                 default="quick", help="--spread sizes (default: %(default)s;"
                 " full: 16 members, 3000 steps each, for a GPU)")
  p.add_argument("--tasks", default="regression,digits_cnn,char_lm",
                 help="--spread tasks (default: %(default)s)")
  p.add_argument("--steps", type=_positive_int, default=None,
                 help="--spread: steps per member, T = M x steps (default: "
                      "the profile's; a multiple of its rounds)")
  p.add_argument("--settings", default="rates,coefficients",
                 help="--spread settings (default: %(default)s)")
  p.add_argument("--pop-size", type=_positive_int, default=None,
                 help="members M (default: 4; --spread: the profile's)")
  p.add_argument("--rounds", type=_positive_int, default=6,
                 help="rounds (default: %(default)s)")
  p.add_argument("--total-steps", type=_positive_int, default=4000,
                 help="member steps per round, all members together "
                      "(default: %(default)s)")
  p.add_argument("--min-steps", type=int, default=None,
                 help="budget floor B_min (default: total-steps / 10)")
  p.add_argument("--beta", type=float, default=None,
                 help="selection temperature (default: 5, the reference's; "
                      "--spread: 1, chosen by benchmarks/swarm_beta.py)")
  p.add_argument("--kappa", type=_fraction, default=None,
                 help="consensus step (default: 0.05, the reference's; "
                      "--spread: 0, chosen by benchmarks/swarm_beta.py)")
  p.add_argument("--batch-size", type=_positive_int, default=128,
                 help="minibatch size (default: %(default)s)")
  p.add_argument("--hidden", type=_positive_int, default=256,
                 help="MLP hidden width (default: %(default)s)")
  p.add_argument("--out", default=None,
                 help="PNG of seed 0's swarm history (default: none)")
  p.add_argument("--no-progress", action="store_true",
                 help="hide the progress bar")
  p.set_defaults(handler=_run_swarm)


def _run_compare(args: argparse.Namespace) -> int:
  from ae_jax.bench import menu, optimizers, report, tasks

  menu.ids()  # the menu's modules register their own tasks (plateau, ...)
  if args.list:
    print("tasks: " + ", ".join(tasks.names()))
    print("optimizers: " + ", ".join(optimizers.names()))
    print("groups: " + ", ".join(f"{k} ({','.join(v)})"
                                 for k, v in optimizers.GROUPS.items()))
    print("any optimizer followed by @tuned: learning rate tuned on seed 0")
    print("menu experiments (ae-jax menu ID): " + ", ".join(
        f"{i} ({menu.get(i).description or menu.get(i).title})"
        for i in menu.ids()))
    return 0
  names = [n for n in args.optimizers.split(",") if n]
  try:
    task = tasks.get(args.task)
    for n in optimizers.expand(names):
      optimizers.get(n)
  except KeyError as e:
    print(f"ae-jax compare: {e.args[0]}", file=sys.stderr)
    return 2
  if args.loss_scale != 1.0:
    task = tasks.scaled(task, args.loss_scale)
  report.compare(task, names, seeds=args.seeds, steps=args.steps,
                 out=None if args.no_plot else args.out, delay=args.delay)
  return 0


def _add_compare(subparsers) -> None:
  p = subparsers.add_parser(
      "compare", help="optimizers side by side on a harness task",
      description=(
          "Trains each optimizer on the task with seeds 1..N (same "
          "initialisation and data order for all; seed 0 tunes NAME@tuned), "
          "prints mean ± 95%% t-interval of the final metric, time-to-target,"
          " AUC and stability incidents, and writes loss and coefficient "
          "figures (ae_jax.bench)."))
  p.add_argument("--task", default="regression",
                 help="task name (see --list; default: %(default)s)")
  p.add_argument("--optimizers", default="adamw,ae_adamw",
                 help="comma-separated names or groups (default: "
                      "%(default)s)")
  p.add_argument("--seeds", type=_positive_int, default=5,
                 help="evaluation seeds 1..N (default: %(default)s)")
  p.add_argument("--steps", type=_positive_int, default=None,
                 help="step budget (default: the task's)")
  p.add_argument("--delay", type=int, default=0,
                 help="stale gradients by this many steps (default: 0)")
  p.add_argument("--loss-scale", type=_positive_float, default=1.0,
                 help="multiply the training loss (default: 1)")
  p.add_argument("--out", default="compare_figures",
                 help="folder for the PNG figures (default: %(default)s)")
  p.add_argument("--no-plot", action="store_true", help="skip the figures")
  p.add_argument("--list", action="store_true",
                 help="list tasks and optimizers and exit")
  p.set_defaults(handler=_run_compare)


def _run_menu(args: argparse.Namespace) -> int:
  from ae_jax.bench import menu

  if args.list or not args.id:
    for i in menu.ids():
      print(f"{i}: {menu.get(i).title}")
    return 0
  try:
    exp = menu.get(args.id)
  except KeyError as e:
    print(f"ae-jax menu: {e.args[0]}", file=sys.stderr)
    return 2
  profile = dict(menu.PROFILES[args.profile])
  if args.seeds is not None:
    profile["seeds"] = args.seeds
  out = exp.run(profile, None if args.no_plot else args.out)
  print(out["markdown"])
  for row in out.get("predictions", []):
    print(f"- {row['prediction']}: {row['measured']} ({row['verdict']})")
  return 0


def _add_menu(subparsers) -> None:
  p = subparsers.add_parser(
      "menu", help="the theory's experiment menu (6, 11, 12, 14, 15, ...)",
      description=(
          "Runs one experiment of ae_jax.bench.menu (AE-RL, plateau escape, "
          "the coupling curve, AEONet, AEO-Eq, AE-Curriculum) and prints its "
          "tables and predictions."))
  p.add_argument("id", nargs="?", default=None,
                 help="experiment id (omit, or --list, to list them)")
  p.add_argument("--list", action="store_true", help="list and exit")
  p.add_argument("--profile", choices=("quick", "full"), default="quick",
                 help="quick (CPU) or full (GPU) (default: %(default)s)")
  p.add_argument("--seeds", type=_positive_int, default=None,
                 help="evaluation seeds 1..N (default: the profile's)")
  p.add_argument("--out", default="menu_figures",
                 help="folder for the PNG figures (default: %(default)s)")
  p.add_argument("--no-plot", action="store_true", help="skip the figures")
  p.set_defaults(handler=_run_menu)


# Subcommand registrars, in the order `--help` lists them.
SUBCOMMANDS: tuple[Callable, ...] = (_add_demo, _add_machine, _add_swarm,
                                     _add_compare, _add_menu)


def build_parser() -> argparse.ArgumentParser:
  """The ``ae-jax`` parser with every subcommand of :data:`SUBCOMMANDS`."""
  from ae_jax import __version__

  parser = argparse.ArgumentParser(
      prog="ae-jax",
      description="Adaptive Evolution (AE): optimizer coefficients that "
                  "adapt online, as Optax transformations.")
  parser.add_argument("--version", action="version",
                      version=f"%(prog)s {__version__}")
  subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     required=True)
  for add in SUBCOMMANDS:
    add(subparsers)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of ``ae-jax``; returns the exit status."""
  args = build_parser().parse_args(argv)
  try:
    return args.handler(args)
  except ModuleNotFoundError as e:
    extra = _EXTRA_OF.get(e.name)
    if extra is None:
      raise
    print(f"ae-jax {args.command} needs {e.name}, which comes with the "
          f"{extra} extra: pip install 'ae-jax[{extra}]'", file=sys.stderr)
    return 2


# Top-level modules of the extras' packages -> the extra that brings them.
_EXTRA_OF = {"sklearn": "bench", "matplotlib": "bench", "tqdm": "bench",
             "optuna": "swarm", "gymnax": "rl"}


if __name__ == "__main__":
  sys.exit(main())
