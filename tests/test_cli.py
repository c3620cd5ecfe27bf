"""The ``ae-jax`` command line: ``demo`` end to end, and ``--help``."""

import os
import subprocess
import sys

import pytest

from ae_jax import cli


def test_demo_prints_table_and_writes_png(tmp_path, capsys):
  out = tmp_path / "d.png"
  status = cli.main(["demo", "--steps", "100", "--seeds", "2", "--out",
                     str(out)])
  assert status == 0
  printed = capsys.readouterr().out
  lines = printed.splitlines()
  header = next(i for i, line in enumerate(lines)
                if line.startswith("method"))
  assert "test acc" in lines[header] and "steps to 0.95" in lines[header]
  assert "final train loss" in lines[header]
  rows = {line.split()[0]: line for line in lines[header + 2:header + 4]}
  assert set(rows) == {"ae_adamw", "adamw"}
  for row in rows.values():
    assert "±" in row and "/2)" in row  # a CI over 2 seeds; reached k/2
  assert out.exists()
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_no_plot_writes_nothing(tmp_path, capsys):
  out = tmp_path / "none.png"
  assert cli.main(["demo", "--steps", "20", "--seeds", "1", "--chunk", "10",
                   "--no-plot", "--no-progress", "--out", str(out)]) == 0
  assert "ae_adamw" in capsys.readouterr().out
  assert not out.exists()


def test_main_help_lists_demo(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["--help"])
  assert exit_info.value.code == 0
  assert "demo" in capsys.readouterr().out


def test_missing_subcommand_is_an_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main([])
  assert exit_info.value.code == 2


def test_bad_option_is_an_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["demo", "--steps", "0"])
  assert exit_info.value.code == 2


@pytest.mark.parametrize("module", ["ae_jax.cli", "ae_jax"])
def test_python_m_help(module):
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  result = subprocess.run([sys.executable, "-m", module, "--help"],
                          capture_output=True, text=True, env=env,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  assert "demo" in result.stdout
