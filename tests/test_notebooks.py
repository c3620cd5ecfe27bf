"""Every notebook in notebooks/ runs top to bottom (jupytext .py, executed with nbclient)."""

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  jupytext = pytest.importorskip("jupytext")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  notebook = jupytext.read(path)
  client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  # Each notebook prints or plots something: an empty run is a failure too.
  assert any(o.get("output_type") in ("stream", "display_data", "execute_result")
             for o in outputs)
