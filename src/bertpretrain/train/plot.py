"""Loss curves of a training history: a matplotlib figure, a PNG file, and the live plot of ``train_bert(plot=...)``.

One function draws them all (:func:`draw_history`), so the figure of ``history.plot()``, the command's
``loss_curves.png`` and the live plot in a notebook look the same. Needs matplotlib
(``pip install 'bertpretrain[plot]'``). Figures are made with ``matplotlib.figure.Figure``, never through
``pyplot``: no backend is chosen, no figure is registered anywhere, so none leaks or pops up, and a notebook's
own backend is left as it was.
"""
import io
import logging
import os
import statistics
import time

from ..display import notebook_shell
from ..files import atomic_path

logger = logging.getLogger(__name__)

#: (history key, panel title) of each panel, left to right.
PANELS = (("mlm_loss", "masked LM loss"), ("nsp_loss", "next-sentence loss"))
FIGSIZE, DPI = (10, 3.6), 100
MARGINS = dict(left=0.06, right=0.985, bottom=0.14, top=0.84, wspace=0.18)


def _figure_class():
    """matplotlib's Figure, or ImportError with the install command."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting the loss curves needs matplotlib: pip install 'bertpretrain[plot]'") from None
    return Figure


def draw_history(figure, history, num_steps=None):
    """Draw ``history`` into ``figure`` (cleared first): one panel per loss of :data:`PANELS`, the per-step
    training loss as a line labelled ``train`` and the held-out evaluations as points labelled ``held-out``,
    under a title with the last step and the median rate. ``num_steps``: fix the step axis to [1, num_steps]
    (a run in progress fills it from the left, as d2l's Animator does)."""
    figure.clear()
    evals = history["eval"]
    for ax, (key, title) in zip(figure.subplots(1, len(PANELS)), PANELS):
        ax.plot(history["step"], history[key], linewidth=1.0, label="train")
        if evals:
            ax.plot([e["step"] for e in evals], [e[key] for e in evals], "o-", label="held-out")
        if num_steps:
            ax.set_xlim(1, max(num_steps, 2))
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    if history["step"]:
        total = f" of {num_steps}" if num_steps else ""
        rate = statistics.median(history["seq_per_sec"])
        figure.suptitle(f"step {history['step'][-1]}{total}, {rate:,.0f} sequences/s", fontsize="medium")
    figure.subplots_adjust(**MARGINS)  # fixed: tight_layout would measure every label at each redraw


def history_figure(history, num_steps=None):
    """A new matplotlib Figure of ``history`` (see :func:`draw_history`), registered with no pyplot state:
    nothing to close; ``figure.savefig(path)`` writes it. In a Jupyter notebook it displays as a cell's value."""
    figure = _figure_class()(figsize=FIGSIZE)
    draw_history(figure, history, num_steps)
    _display_figures_in_notebook()
    return figure


def _png(figure):
    """The bytes of ``figure`` as a PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _save_png(figure, path):
    """Write ``figure`` to the PNG ``path`` under a temporary name then renamed, so a crash never leaves a
    broken image; return ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=DPI, format="png")
    return path


def plot_history(history, path):
    """Draw ``history`` (as ``history.plot()`` does) into the PNG ``path`` and return ``path``.

    Raises ImportError with the install command when matplotlib is missing.
    """
    return _save_png(history_figure(history), path)


def _display_figures_in_notebook():
    """In a Jupyter kernel, let a Figure that is a cell's value display as a PNG even though pyplot (whose inline
    backend registers that) was never imported; a display already registered for figures is kept."""
    shell = notebook_shell()
    if shell is None:
        return
    formatter = shell.display_formatter.formatters["image/png"]
    Figure = _figure_class()
    try:
        formatter.lookup_by_type(Figure)
    except KeyError:
        formatter.for_type(Figure, _png)


class LivePlot:
    """The loss curves of a run in progress, redrawn into one place: a notebook output or a PNG file.

    ``target``: ``'notebook'`` (one image output under the running cell, replaced in place through IPython's
    display id) or the path of a PNG file (rewritten atomically). A redraw costs 0.1-0.3 s on a CPU core, so
    :meth:`update` skips one that would come less than ``min_seconds`` after the last, or that would make drawing
    more than a ``max_share`` of the time; the final redraw is never skipped.
    """

    min_seconds, max_share = 1.0, 0.1

    def __init__(self, target, num_steps):
        self.figure = _figure_class()(figsize=FIGSIZE)
        self.target, self.num_steps = target, num_steps
        self.handle, self.drawn_at, self.cost, self.redraws = None, None, 0.0, 0

    def update(self, history, final=False):
        """Redraw ``history`` unless it is too soon after the last redraw (``final``: redraw anyway)."""
        start = time.monotonic()
        wait = max(self.min_seconds, self.cost * (1 - self.max_share) / self.max_share)
        if not final and self.drawn_at is not None and start - self.drawn_at < wait:
            return
        draw_history(self.figure, history, self.num_steps)
        if self.target == "notebook":
            from IPython.display import display
            data = {"image/png": _png(self.figure), "text/plain": f"<loss curves: step {history['step'][-1]}>"
                    if history["step"] else "<loss curves>"}
            if self.handle is None:
                self.handle = display(data, raw=True, display_id=True)
            else:
                self.handle.update(data, raw=True)
        else:
            _save_png(self.figure, self.target)
        self.drawn_at = time.monotonic()
        self.cost, self.redraws = self.drawn_at - start, self.redraws + 1

    def close(self):
        """Release the figure (the last image stays where it was shown or written)."""
        self.figure.clear()


def live_plot(plot, num_steps):
    """The :class:`LivePlot` that ``train_bert(plot=plot)`` draws into, or None.

    ``plot``: False or None, no plot; True, in a Jupyter notebook the figure under the running cell, elsewhere
    no plot and one warning that says how to get one; a path (ending in ``.png``), that file, anywhere.
    Raises ImportError with the install command when a plot is to be drawn and matplotlib is missing.
    """
    if not plot:
        return None
    if plot is True:
        if notebook_shell() is None:
            logger.warning("plot=True draws the losses live in a Jupyter notebook only: nothing is drawn here. "
                           "Pass plot='losses.png' to redraw a PNG file as training goes, or call history.plot() "
                           "(or plot_history(history, path)) when it ends")
            return None
        return LivePlot("notebook", num_steps)
    return LivePlot(os.fspath(plot), num_steps)
