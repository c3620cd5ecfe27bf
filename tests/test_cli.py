"""The ``ae-jax`` command line: ``demo`` end to end, and ``--help``."""

import os
import subprocess
import sys

import pytest

from ae_jax.bench import cli


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
  printed = capsys.readouterr().out
  assert "demo" in printed and "swarm" in printed


def test_missing_subcommand_is_an_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main([])
  assert exit_info.value.code == 2


def test_bad_option_is_an_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["demo", "--steps", "0"])
  assert exit_info.value.code == 2


@pytest.mark.parametrize("module", ["ae_jax.bench.cli", "ae_jax"])
def test_python_m_help(module):
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  result = subprocess.run([sys.executable, "-m", module, "--help"],
                          capture_output=True, text=True, env=env,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  assert "demo" in result.stdout


def test_swarm_prints_rounds_table_and_verdict(tmp_path, capsys):
  out = tmp_path / "swarm.png"
  status = cli.main(["swarm", "--seeds", "2", "--rounds", "2",
                     "--total-steps", "80", "--hidden", "8", "--batch-size",
                     "16", "--no-progress", "--out", str(out)])
  assert status == 0
  printed = capsys.readouterr().out
  lines = printed.splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith("| round"))
  assert "swarm best" in lines[header] and "adamw mean" in lines[header]
  assert "ae-independent best" in lines[header]
  rows = lines[header + 2:header + 4]
  assert [r.split("|")[1].strip() for r in rows] == ["1", "2"]
  assert all(r.count("±") == 6 for r in rows)   # 3 methods x best, mean
  assert printed.count("final best: swarm - ") == 2
  assert "w=[" in printed and "B=[" in printed
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_swarm_bad_configuration_is_an_error(capsys):
  # 4 members x floor 30 > 100 steps a round.
  assert cli.main(["swarm", "--seeds", "1", "--rounds", "1", "--total-steps",
                   "100", "--min-steps", "30", "--no-progress"]) == 2
  assert "min_steps" in capsys.readouterr().err


def test_menu_lists_the_experiments_and_rejects_an_unknown_id(capsys):
  assert cli.main(["menu", "--list"]) == 0
  listed = capsys.readouterr().out
  for eid in ("6", "11", "12", "14", "15", "curriculum"):
    assert f"{eid}: " in listed
  assert cli.main(["menu", "99"]) == 2
  assert "unknown menu experiment '99'" in capsys.readouterr().err


def test_compare_list_shows_the_menu_and_its_tasks(capsys):
  assert cli.main(["compare", "--list"]) == 0
  printed = capsys.readouterr().out
  assert "plateau" in printed.splitlines()[0]  # registered by the menu
  assert "menu experiments (ae-jax menu ID): " in printed
