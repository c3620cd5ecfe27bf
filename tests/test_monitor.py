"""ae.monitor writes the closed loop to CSV, TensorBoard and W&B (offline),
and ae_jax.train_state forwards the loss through Flax Linen's TrainState;
every file is read back."""

import csv
import glob
import os
import struct
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ae_jax as ae


def _run(tx, steps=12):
  params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
  loss = lambda p: jnp.sum((p["w"] - 2.0) ** 2) + jnp.sum((p["b"] + 1) ** 2)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params, value=value)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for i in range(steps):
    params, state = step(params, state)
    yield i, state


def _tensorboard_scalars(logdir):
  """{tag: [(step, value)]} from the TFRecord event files in ``logdir``."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  out = {}
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      record = data[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_scalars_flatten_coefficients_and_signals():
  _, state = list(_run(ae.ae_adamw(), steps=2))[-1]
  flat = ae.monitor.scalars(state)
  assert flat["coefficient/learning_rate"] == ae.coefficients(
      state)["learning_rate"]
  assert flat["signal/rho"] == ae.signals(state)["rho"]
  assert not any(k.startswith("signal/") for k in
                 ae.monitor.scalars(state, signals=False))


def test_csv_tensorboard_and_wandb_offline_read_back(tmp_path):
  pytest.importorskip("tensorboardX")
  pytest.importorskip("wandb")
  os.environ["WANDB_SILENT"] = "true"
  logger = ae.monitor.Logger(
      ae.monitor.CSVWriter(tmp_path / "run.csv"),
      ae.monitor.TensorBoardWriter(tmp_path / "tb"),
      ae.monitor.WandbWriter(project="ae-test", dir=str(tmp_path)),
      every=3)
  rates = {}
  with logger:
    for i, state in _run(ae.ae_adamw()):
      logger(i, state)
      rates[i] = float(ae.coefficients(state)["learning_rate"])

  with open(tmp_path / "run.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["step"]) for r in rows] == [0, 3, 6, 9]
  for r in rows:
    np.testing.assert_allclose(float(r["coefficient/learning_rate"]),
                               rates[int(r["step"])], rtol=1e-6)
  assert "signal/gamma" in rows[0]

  tb = _tensorboard_scalars(tmp_path / "tb")
  got = dict(tb["coefficient/learning_rate"])
  assert sorted(got) == [0, 3, 6, 9]
  for step, value in got.items():
    np.testing.assert_allclose(value, rates[step], rtol=1e-6)

  runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
  assert len(runs) == 1
  # wandb's service process can still be writing the offline file after
  # run.finish() returns (a clean-clone CI run under load read only its
  # header): wait for it, up to 30 s.
  deadline = time.monotonic() + 30.0
  while True:
    with open(runs[0], "rb") as f:
      blob = f.read()
    if (b"coefficient/learning_rate" in blob and b"signal/rho" in blob
        or time.monotonic() > deadline):
      break
    time.sleep(0.2)
  assert b"coefficient/learning_rate" in blob and b"signal/rho" in blob


def test_callback_logs_from_inside_a_scan(tmp_path):
  tx = ae.ae_sgdm()
  params = jnp.ones(3)
  loss = lambda p: jnp.sum(p ** 2)
  logger = ae.monitor.Logger(ae.monitor.CSVWriter(tmp_path / "scan.csv"),
                             every=2, signals=False)

  def body(carry, i):
    params, state = carry
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params, value=value)
    logger.callback(i, state)
    return (optax.apply_updates(params, updates), state), None

  jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(6)))(
      (params, tx.init(params)))
  jax.effects_barrier()
  logger.close()
  with open(tmp_path / "scan.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["step"]) for r in rows] == [0, 2, 4]
  assert set(rows[0]) == {"step", "coefficient/learning_rate",
                          "coefficient/momentum", "coefficient/sigma"}


def test_logger_refuses_bad_configuration():
  with pytest.raises(ValueError, match="writer"):
    ae.monitor.Logger()
  with pytest.raises(ValueError, match="every"):
    ae.monitor.Logger(ae.monitor.CSVWriter("x.csv"), every=0)


def test_linen_train_state_forwards_the_loss():
  nn = pytest.importorskip("flax.linen")
  from ae_jax.train_state import TrainState  # pylint: disable=import-outside-toplevel

  model = nn.Dense(1)
  x = jnp.linspace(-1, 1, 32)[:, None]
  y = 3 * x - 1
  params = model.init(jax.random.PRNGKey(0), x)
  state = TrainState.create(apply_fn=model.apply, params=params,
                            tx=ae.ae_adamw(1e-2))

  @jax.jit
  def train_step(state):
    def loss_fn(p):
      return jnp.mean((state.apply_fn(p, x) - y) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads, value=loss), loss

  start = state
  first = None
  for _ in range(300):
    state, loss = train_step(state)
    first = loss if first is None else first
  assert int(state.step) == 300
  assert float(loss) < 1e-2 * float(first)

  # The same steps as the plain Optax loop with value= passed by hand.
  tx = ae.ae_adamw(1e-2)

  @jax.jit
  def plain_step(p, s):
    value, grads = jax.value_and_grad(
        lambda q: jnp.mean((model.apply(q, x) - y) ** 2))(p)
    updates, s = tx.update(grads, s, p, value=value)
    return optax.apply_updates(p, updates), s

  p, s = params, tx.init(params)
  state = start
  for _ in range(20):
    p, s = plain_step(p, s)
    state, _ = train_step(state)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
