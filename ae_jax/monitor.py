"""Logging the closed loop: per-step signals and coefficients to CSV,
TensorBoard and Weights & Biases.

:func:`scalars` flattens what an AE state reports (``ae.coefficients`` and
``ae.signals``, every AE part of it) into ``{"coefficient/learning_rate":
..., "signal/rho": ...}``; a :class:`Logger` writes that to any number of
writers, from the host loop or from inside ``jit`` / ``lax.scan`` (through
``jax.debug.callback``)::

  logger = ae.monitor.Logger(ae.monitor.CSVWriter("run.csv"),
                             ae.monitor.TensorBoardWriter("tb/"),
                             ae.monitor.WandbWriter(project="ae", mode="offline"),
                             every=10)
  for step in range(steps):
    params, state = train_step(params, state, batch)
    logger(step, state)          # host side, one device_get per logged step
  logger.close()

Inside a jitted loop, ``logger.callback(step, state)`` logs without leaving
the trace. TensorBoard needs ``tensorboardX`` and W&B needs ``wandb``
(``pip install ae-jax[logging]``); CSV needs nothing.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Mapping, Protocol

import jax
import numpy as np

from ae_jax import _controller as controller_lib


def scalars(state, *, signals: bool = True) -> dict[str, jax.Array]:
  """The coefficients (and signals) of every AE part of ``state``, flat.

  Keys are ``coefficient/<name>`` and ``signal/<name>``; with several AE
  parts (``optax.multi_transform``) each key is prefixed by the part's path.
  Works on concrete and traced states (no host transfer here).
  """
  coefficients = controller_lib.coefficients(state, by_path=True)
  measured = controller_lib.signals(state, by_path=True) if signals else {}
  several = len(coefficients) > 1
  out = {}
  for path, values in coefficients.items():
    prefix = f"{path}/" if several else ""
    for name, value in values.items():
      out[f"{prefix}coefficient/{name}"] = value
    for name, value in measured.get(path, {}).items():
      out[f"{prefix}signal/{name}"] = value
  return out


class Writer(Protocol):
  """Anything with ``write(step, scalars)`` and ``close()``."""

  def write(self, step: int, values: Mapping[str, float]) -> None:
    ...

  def close(self) -> None:
    ...


class CSVWriter:
  """Appends one row per logged step to a CSV file (header: ``step`` and
  the scalar names of the first row)."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._file = None
    self._writer = None
    self._fields = None

  def write(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      self._file = open(self.path, "w", newline="", encoding="utf-8")
      self._fields = ["step", *values]
      self._writer = csv.DictWriter(self._file, fieldnames=self._fields)
      self._writer.writeheader()
    self._writer.writerow({"step": int(step), **values})
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


class TensorBoardWriter:
  """TensorBoard event files through ``tensorboardX``'s ``SummaryWriter``."""

  def __init__(self, logdir: str | os.PathLike, **kwargs):
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("TensorBoardWriter needs tensorboardX: pip install "
                        "tensorboardX (or ae-jax[logging])") from e
    self._writer = SummaryWriter(logdir=os.fspath(logdir), **kwargs)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    for name, value in values.items():
      self._writer.add_scalar(name, value, global_step=int(step))

  def close(self) -> None:
    self._writer.flush()
    self._writer.close()


class WandbWriter:
  """A Weights & Biases run (``mode="offline"`` writes locally, for
  ``wandb sync`` later); the keyword arguments go to ``wandb.init``."""

  def __init__(self, **init_kwargs):
    try:
      import wandb  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("WandbWriter needs wandb: pip install wandb (or "
                        "ae-jax[logging])") from e
    init_kwargs.setdefault("mode", "offline")
    self._run = wandb.init(**init_kwargs)

  @property
  def run(self):
    return self._run

  def write(self, step: int, values: Mapping[str, float]) -> None:
    self._run.log(dict(values), step=int(step))

  def close(self) -> None:
    self._run.finish()


class Logger:
  """Writes :func:`scalars` of an AE state to ``writers`` every ``every``
  steps.

  Args:
    *writers: :class:`CSVWriter`, :class:`TensorBoardWriter`,
      :class:`WandbWriter` or anything with ``write`` and ``close``.
    every: log steps that are multiples of this.
    signals: also log the signals (not only the coefficients).
  """

  def __init__(self, *writers: Writer, every: int = 1, signals: bool = True):
    if not writers:
      raise ValueError("Logger needs at least one writer")
    if not int(every) >= 1:
      raise ValueError(f"Logger: every must be >= 1, got {every}")
    self.writers = writers
    self.every = int(every)
    self.signals = signals

  def write(self, step, values: Mapping[str, Any]) -> None:
    """Writes already-gathered scalars (host values) for ``step``."""
    step = int(step)
    if step % self.every:
      return
    host = {k: float(np.asarray(v)) for k, v in values.items()}
    for writer in self.writers:
      writer.write(step, host)

  def __call__(self, step, state) -> None:
    """Logs ``state`` at ``step`` from the host loop."""
    if int(step) % self.every:
      return
    self.write(step, jax.device_get(scalars(state, signals=self.signals)))

  def callback(self, step, state) -> None:
    """Logs from inside ``jit`` / ``lax.scan`` (``jax.debug.callback``;
    steps arrive in order on one device; under ``vmap`` every member calls,
    so log a population from the host instead)."""
    jax.debug.callback(self.write, step,
                       scalars(state, signals=self.signals), ordered=True)

  def close(self) -> None:
    for writer in self.writers:
      writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
