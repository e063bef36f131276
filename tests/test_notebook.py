"""examples/pretrain_bert.ipynb, run as a reader runs it: in a real Jupyter kernel of this Python, offline.

The notebook's sizes live in its cell tagged ``parameters``; the test runs a cell after it that makes them small
(papermill's convention), so the rest of the notebook runs as stored. It checks what a reader would see: no
error and nothing on stderr, the live loss plot as one image in the training cell, a training cell whose text
stays small (no progress bar or log line per step), and the results of each section.
"""
import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbclient is not installed: pip install 'bertpretrain[test]'")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed: pip install 'bertpretrain[test]'")
pytest.importorskip("ipykernel", reason="ipykernel is not installed: pip install 'bertpretrain[test]'")
pytest.importorskip("matplotlib", reason="matplotlib is not installed: pip install 'bertpretrain[plot]'")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "pretrain_bert.ipynb"
SMALL = {"batch_size": 16, "max_len": 32, "num_steps": 24, "log_interval": 4, "eval_interval": 8}
MAX_TEXT_BYTES = 3000  # the training cell's outputs but its image: a progress line, maybe a warning


def read_notebook():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    return notebook


def code_cell(notebook, marker):
    (cell,) = [c for c in notebook.cells if c.cell_type == "code" and marker in c.source]
    return cell


def text_of(outputs):
    """Everything a cell shows as text: streams, and the text/plain of results and displays."""
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)


def test_the_notebook_is_stored_without_outputs():
    code = [c for c in read_notebook().cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), \
        "clear the outputs before committing examples/pretrain_bert.ipynb (Edit > Clear Outputs of All Cells)"


def small_sizes(notebook):
    """The notebook with a cell after its ``parameters`` cell that sets :data:`SMALL`."""
    (index,) = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    for name in SMALL:
        assert re.search(rf"\b{name}\b", notebook.cells[index].source), f"the parameters cell no longer sets {name}"
    cell = nbformat.v4.new_code_cell("\n".join(f"{name} = {value}" for name, value in SMALL.items()))
    cell.id = "injected-parameters"
    notebook.cells.insert(index + 1, cell)
    return notebook


def kernel_of_this_python(folder):
    """A kernel manager that starts an IPython kernel with this test's own interpreter (sys.executable), whatever
    kernels the machine has installed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    spec = folder / "kernels" / "bertpretrain-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "bertpretrain tests", "language": "python"}))
    return KernelManager(kernel_name=spec.name, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))


def test_the_notebook_runs_in_a_jupyter_kernel(tmp_path):
    notebook = small_sizes(read_notebook())
    work = tmp_path / "work"
    work.mkdir()
    nbclient.NotebookClient(notebook, km=kernel_of_this_python(tmp_path), timeout=300,
                            resources={"metadata": {"path": str(work)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, "\n".join("\n".join(o.traceback) for o in errors)
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"the notebook wrote to stderr:\n{''.join(stderr)[:3000]}"
    assert list(work.iterdir()) == [], "the notebook wrote files into its folder"

    training = code_cell(notebook, "bp.train_bert(")
    images = [o for o in training.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, "the live plot must be one image, updated in place"
    assert images[0].data["text/plain"] == f"<loss curves: step {SMALL['num_steps']}>"  # its last redraw
    text = [dict(o, data={k: v for k, v in o.get("data", {}).items() if k != "image/png"}) for o in training.outputs]
    assert len(json.dumps(text)) < MAX_TEXT_BYTES, f"the training cell's text is too long: {text}"
    assert f" {SMALL['num_steps']}/{SMALL['num_steps']} " in text_of(training.outputs), "no finished progress line"

    (summary,) = [o for c in notebook.cells if c.cell_type == "code" and c.source.strip() == "history"
                  for o in c.outputs]
    assert summary.data["text/plain"].startswith(f"TrainingHistory({SMALL['num_steps']} steps; ")
    assert summary.data["text/html"].startswith("<table>")
    (figure,) = code_cell(notebook, "history.plot()").outputs
    assert figure.data["image/png"] and figure.data["text/plain"].startswith("<Figure size")

    scores = text_of(code_cell(notebook, "bp.evaluate_bert(").outputs)
    assert re.search(r"held-out masked LM: loss \d+\.\d+ \(uniform guessing: \d+\.\d+\)", scores), scores
    shapes = text_of(code_cell(notebook, '["he", "just", "left"]').outputs)
    assert shapes.startswith("((1, 10, 128), (1, 128), array("), shapes
    printed = text_of(code_cell(notebook, "cosine(").outputs)
    cosines = [float(x) for x in re.findall(r"cosine of .*: (-?\d\.\d+)", printed)]
    assert len(cosines) == 2 and all(-1 <= c <= 1 for c in cosines), cosines


def test_the_readme_says_how_to_open_the_notebook():
    """Its notebook section installs extras that exist and opens this notebook (run above)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## In a notebook\n(.*?)(?=^## )", readme, re.S | re.M).group(1)
    (block,) = re.findall(r"^```bash\n(.*?)^```$", section, re.S | re.M)
    install, open_it = block.splitlines()
    extras = re.fullmatch(r"pip install 'bertpretrain\[([a-z,]+)\]' jupyterlab", install).group(1).split(",")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert extras == ["cpu", "plot"] and all(re.search(rf"^{e} = \[", pyproject, re.M) for e in extras)
    assert open_it == "jupyter lab examples/pretrain_bert.ipynb" and (ROOT / open_it.split()[-1]) == NOTEBOOK
