"""What a notebook user sees of a run: the loss curves (history.plot(), the command's PNG, the live plot of
train_bert(plot=...)), the history's summary, the progress bar in a notebook, and warnings given once.

A notebook is simulated here by pretending to be inside a Jupyter kernel and recording what would be sent to
IPython's display; tests/test_notebook.py runs the example notebook in a real kernel.
"""
import logging
import sys

import mxnet as mx
import pytest

from bertpretrain import display
from bertpretrain.data import PretrainingBatch, load_data_wiki
from bertpretrain.model import BERTModel
from bertpretrain.train import TrainingHistory, loop, plot, train_bert

pytest.importorskip("matplotlib", reason="matplotlib is not installed: pip install 'bertpretrain[plot]'")
from matplotlib import _pylab_helpers  # noqa: E402

TINY = dict(num_hiddens=32, ffn_num_hiddens=64, num_heads=2, num_layers=1, max_len=32)


def made_up_history(steps, evaluate_every=None):
    history = TrainingHistory()
    for step in range(1, steps + 1):
        history.record(step, 1e-3 * step / steps, 900.0 + step % 7,
                       {"mlm_loss": 7.0 - step / steps, "nsp_loss": 0.7, "mlm_acc": 0.25, "nsp_acc": 0.55})
        if evaluate_every and step % evaluate_every == 0:
            history.eval.append({"step": step, "mlm_loss": 6.5, "mlm_acc": 0.3, "mlm_perplexity": 665.1,
                                 "nsp_loss": 0.69, "nsp_acc": 0.6, "num_examples": 100})
    return history


def lines_of(figure):
    """{panel title: [(line label, number of points)]}."""
    return {ax.get_title(): [(line.get_label(), len(line.get_xdata())) for line in ax.get_lines()]
            for ax in figure.axes}


def test_history_plot_draws_each_step_and_each_evaluation_without_pyplot():
    history = made_up_history(1000, evaluate_every=250)
    figure = history.plot()
    assert lines_of(figure) == {"masked LM loss": [("train", 1000), ("held-out", 4)],
                                "next-sentence loss": [("train", 1000), ("held-out", 4)]}
    mlm_train, mlm_eval = figure.axes[0].get_lines()
    assert list(mlm_train.get_ydata()) == history.mlm_loss and list(mlm_eval.get_xdata()) == [250, 500, 750, 1000]
    assert figure._suptitle.get_text() == "step 1000, 903 sequences/s"
    assert _pylab_helpers.Gcf.get_all_fig_managers() == [], "a figure was left in pyplot's state"


def test_the_commands_png_is_drawn_by_the_same_function(tmp_path):
    history = made_up_history(30, evaluate_every=10)
    path = plot.plot_history(history, str(tmp_path / "run" / "loss_curves.png"))
    png = (tmp_path / "run" / "loss_curves.png").read_bytes()
    assert path.endswith("loss_curves.png") and png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (plot.FIGSIZE[0] * plot.DPI, plot.FIGSIZE[1] * plot.DPI)
    assert list(tmp_path.joinpath("run").iterdir()) == [tmp_path / "run" / "loss_curves.png"]  # no temporary left


def test_plotting_without_matplotlib_names_the_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if it were not installed
    history = made_up_history(3)
    with pytest.raises(ImportError, match=r"needs matplotlib: pip install 'bertpretrain\[plot\]'"):
        history.plot()
    train_iter, vocab = load_data_wiki(8, 32, "wikitext-2-sample", seed=0)
    with pytest.raises(ImportError, match=r"pip install 'bertpretrain\[plot\]'"):
        train_bert(train_iter, BERTModel(len(vocab), **TINY), devices=[mx.cpu()], num_steps=2, progress=False,
                   plot=str(tmp_path / "losses.png"))


def test_the_summary_of_a_long_history_is_one_short_line():
    history = made_up_history(1000, evaluate_every=100)
    text = repr(history)
    assert len(text) < 300, text
    assert text == ("TrainingHistory(1000 steps; step 1000: mlm loss 6.000 (acc 0.250), nsp loss 0.700 (acc 0.550), "
                    "lr 0.001; eval at step 1000: mlm loss 6.500 (acc 0.300), nsp loss 0.690 (acc 0.600); "
                    "903 seq/s)")
    assert repr(TrainingHistory()) == "TrainingHistory(0 steps)"
    history.interrupted, history.rank, history.workers = True, 1, 2
    assert repr(history).endswith("; 903 seq/s; rank 1 of 2; interrupted)")


def test_a_notebook_shows_the_history_as_a_table():
    history = made_up_history(1000, evaluate_every=50)
    history.checkpoint = "runs/<odd>/step-1000"
    table = history._repr_html_()
    assert table.startswith("<table><caption>TrainingHistory: 1000 steps, median 903 sequences/s, checkpoint "
                            "runs/&lt;odd&gt;/step-1000</caption>")
    assert table.count("<tr><th>train (last step)</th><td>1000</td><td>6</td>") == 1
    assert table.count("<tr><th>held-out</th>") == 10  # the last 10 of 20 evaluations
    assert "<td>665.1</td>" in table and len(table) < 3000
    assert "<tbody></tbody>" in TrainingHistory()._repr_html_()


class FakeNotebook:
    """Pretend to run inside a Jupyter kernel and record every output sent to IPython's display: ``outputs``
    is one list of shown versions per display id, each version ``(data, snapshot())``."""

    def __init__(self, monkeypatch, snapshot=lambda: None):
        self.outputs, self.snapshot = [], snapshot
        monkeypatch.setattr(display, "notebook_shell", lambda: object())
        monkeypatch.setattr(plot, "notebook_shell", lambda: object())
        import IPython.display
        monkeypatch.setattr(IPython.display, "display", self.display)

    def display(self, data, raw, display_id):
        assert raw is True and display_id is True
        versions = [(data, self.snapshot())]
        self.outputs.append(versions)
        notebook = self

        class Handle:
            def update(self, data, raw):
                versions.append((data, notebook.snapshot()))
        return Handle()


def test_the_live_plot_is_one_figure_redrawn_every_log_interval_steps(monkeypatch):
    made = []
    monkeypatch.setattr(loop, "live_plot", lambda *args: made.append(plot.live_plot(*args)) or made[-1])
    monkeypatch.setattr(plot.LivePlot, "min_seconds", 0.0)
    monkeypatch.setattr(plot.LivePlot, "max_share", 1.0)  # no redraw skipped for time
    notebook = FakeNotebook(monkeypatch, snapshot=lambda: lines_of(made[0].figure)["masked LM loss"])
    train_iter, vocab = load_data_wiki(8, 32, "wikitext-2-sample", seed=0)
    eval_iter, _ = load_data_wiki(8, 32, "wikitext-2-sample", split="valid", vocab=vocab, seed=0, shuffle=False)
    history = train_bert(train_iter, BERTModel(len(vocab), **TINY), devices=[mx.cpu()], num_steps=12, seed=0,
                         progress=False,
                         log_interval=4, eval_iter=eval_iter, eval_interval=6, plot=True)
    assert len(notebook.outputs) == 1, "the live plot must be one output, updated in place"
    shown = [lines for data, lines in notebook.outputs[0]]
    # steps 4 and 8, then the end, after the final evaluation (the evaluations: steps 6 and 12)
    assert shown == [[("train", 4)], [("train", 8), ("held-out", 1)], [("train", 12), ("held-out", 2)]]
    for data, _ in notebook.outputs[0]:
        assert data["image/png"].startswith(b"\x89PNG") and data["text/plain"].startswith("<loss curves: step ")
    assert made[0].redraws == 3 and made[0].figure.axes == []  # released at the end
    assert [e["step"] for e in history.eval] == [6, 12]
    assert _pylab_helpers.Gcf.get_all_fig_managers() == []


def test_the_live_plot_skips_redraws_that_would_cost_more_than_its_share(monkeypatch):
    live = plot.LivePlot("notebook", 100)
    FakeNotebook(monkeypatch)
    history = made_up_history(1)
    live.update(history)
    live.update(history)  # at once: too soon after the first
    live.update(history, final=True)  # never skipped
    assert live.redraws == 2


def test_plot_true_outside_a_notebook_draws_nothing_and_says_so_once(caplog):
    train_iter, vocab = load_data_wiki(8, 32, "wikitext-2-sample", seed=0)
    with caplog.at_level(logging.WARNING, logger="bertpretrain"):
        history = train_bert(train_iter, BERTModel(len(vocab), **TINY), devices=[mx.cpu()], num_steps=4, seed=0,
                             progress=False,
                             log_interval=1, plot=True)
    assert len(history.step) == 4
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "plot=True draws the losses live in a Jupyter notebook only" in warned[0]
    assert "plot='losses.png'" in warned[0] and "history.plot()" in warned[0]


def test_plot_a_png_path_redraws_that_file_anywhere(tmp_path):
    train_iter, vocab = load_data_wiki(8, 32, "wikitext-2-sample", seed=0)
    path = tmp_path / "live" / "losses.png"
    train_bert(train_iter, BERTModel(len(vocab), **TINY), devices=[mx.cpu()], num_steps=3, seed=0, progress=False,
               plot=str(path))
    assert path.read_bytes().startswith(b"\x89PNG") and list(path.parent.iterdir()) == [path]


@pytest.mark.parametrize("value", ["yes", "losses.pdf", 1])
def test_a_bad_plot_option_fails_clearly(value):
    train_iter, vocab = load_data_wiki(8, 32, "wikitext-2-sample", seed=0)
    with pytest.raises(ValueError, match=r"plot must be True \(live in a notebook\), False or the path of a \.png"):
        train_bert(train_iter, BERTModel(len(vocab), **TINY), devices=[mx.cpu()], num_steps=1, progress=False,
                   plot=value)


def test_the_progress_bar_in_a_notebook_is_one_line_replaced_in_place(monkeypatch):
    notebook = FakeNotebook(monkeypatch)
    monkeypatch.setattr(display, "NOTEBOOK_REFRESH_SECONDS", 0)
    with display.progress_bar(None, total=200, unit="step") as bar:
        for _ in range(200):
            bar.update(1)
    (versions,) = notebook.outputs
    assert len(versions) > 10
    lines = [data["text/plain"] for data, _ in versions]
    assert all("\r" not in line and "\n" not in line for line in lines)
    assert lines[0].startswith("  0%|") and lines[-1].startswith("100%|") and " 200/200 " in lines[-1]
    assert "\u2588" in lines[-1]  # tqdm's Unicode blocks, not '#'


def test_the_progress_bar_outside_a_notebook_shows_on_terminals_only():
    assert display.notebook_shell() is None
    for show, disabled in ((None, True), (True, False), (False, True)):  # None: pytest's stderr is no terminal
        with display.progress_bar(show, total=3) as bar:
            assert bar.disable == disabled, show


class WithShortBatches:
    """Batches of 2 examples, each followed by one of 1 example (as at an epoch's end): one of them is fewer
    than 2 devices."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        for batch in self.loader:
            yield PretrainingBatch(*(field[:2] for field in batch))
            yield PretrainingBatch(*(field[:1] for field in batch))


def test_a_warning_about_skipped_batches_comes_once_per_run(caplog):
    train_iter, vocab = load_data_wiki(4, 32, "wikitext-2-sample", seed=0)
    with caplog.at_level(logging.INFO, logger="bertpretrain"):
        history = train_bert(WithShortBatches(train_iter), BERTModel(len(vocab), **TINY), devices=[mx.cpu(0),
                             mx.cpu(1)], num_steps=5,
                             seed=0, progress=False, log_interval=0)
    assert len(history.step) == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["skipping a batch of 1 examples: fewer than the 2 devices (so is every such batch; "
                        "drop_last=True in load_data_wiki leaves them out)"]
    assert "skipped 4 batches of fewer examples than devices" in caplog.text
