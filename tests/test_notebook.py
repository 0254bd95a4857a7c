"""examples/quickstart.ipynb runs end to end in a real kernel (nbclient) on a tiny budget.

Checked against the run directories the notebook's calls wrote: the values the notebook
printed are those of results.json, the export verified its files.
"""

import json
import os

import nbclient
import nbformat

from conftest import REPO


def test_quickstart_notebook_runs_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setenv("KD_NOTEBOOK_BUDGET", "tiny")
  monkeypatch.setenv("KD_NOTEBOOK_ROOT", str(tmp_path / "runs"))
  notebook = nbformat.read(os.path.join(REPO, "examples", "quickstart.ipynb"), as_version=4)
  nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  runs = tmp_path / "runs"
  results = {name: json.load(open(runs / name / "results.json"))
             for name in ("teacher", "student_kd", "student_labels")}
  assert results["student_kd"]["role"] == "distill"
  assert results["student_kd"]["model"] == "my_student"
  assert results["student_kd"]["params"] == results["student_labels"]["params"]
  text = "".join(output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
                 for cell in notebook.cells if cell.cell_type == "code"
                 for output in cell.outputs)
  accuracy = 100 * results["student_kd"]["test_accuracy"]
  assert f"test accuracy {accuracy:.2f}%" in text  # the RunResult the notebook printed
  assert (runs / "student_kd" / "export" / "model_int8.tflite").exists()
  assert results["teacher"]["test_accuracy"] > 0.5
