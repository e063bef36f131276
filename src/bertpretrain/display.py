"""Where progress is shown: a tqdm bar on a terminal's stderr; in a Jupyter notebook, one output replaced in place.

A notebook kernel's stderr is no terminal: a text bar written there with carriage returns arrives as one output
per refresh (a cell stored by ``nbconvert --execute`` or ``nbclient`` keeps them all: some 80 KB per minute),
and tqdm's notebook widget needs ``ipywidgets``, which a notebook install often lacks (``tqdm.auto`` then warns
and falls back to that text bar). So in a notebook the bar's text goes into one display output (IPython's
display id) that each refresh replaces: one line in the cell, however long the run.
"""
import sys

from tqdm import tqdm

#: Seconds between two refreshes of a bar in a notebook (each one is a message to the front end).
NOTEBOOK_REFRESH_SECONDS = 0.5


def notebook_shell():
    """The IPython shell of the Jupyter kernel this code runs in, or None (a script, a terminal, terminal IPython)."""
    ipython = sys.modules.get("IPython")  # every kernel has imported it; not importing it here costs nothing elsewhere
    shell = ipython.get_ipython() if ipython is not None else None
    return shell if getattr(shell, "kernel", None) is not None else None


class _DisplayLine:
    """A file for tqdm that shows the last line written to it as one notebook output (``text/plain``),
    replaced in place on each flush (tqdm writes ``'\\r' + line`` and flushes at every refresh)."""
    encoding = "utf-8"  # tqdm draws its bar with Unicode blocks only on a file that says it takes them

    def __init__(self):
        self.line, self.shown, self.handle = "", None, None

    def write(self, text):
        for part in text.replace("\n", "\r").split("\r"):
            if part.strip():
                self.line = part.rstrip()

    def flush(self):
        if self.line == self.shown:
            return
        from IPython.display import display
        data = {"text/plain": self.line}
        if self.handle is None:
            self.handle = display(data, raw=True, display_id=True)
        else:
            self.handle.update(data, raw=True)
        self.shown = self.line


def progress_bar(show=None, **options):
    """A tqdm progress bar (``options`` are tqdm's) where it can update in place.

    ``show``: True, False, or None: on a terminal (stderr is a tty) or in a Jupyter notebook, where the bar is
    one output line replaced at each refresh (at most every :data:`NOTEBOOK_REFRESH_SECONDS`), not a stream
    of carriage returns.
    """
    if notebook_shell() is None:
        return tqdm(disable=None if show is None else not show, **options)
    options.pop("dynamic_ncols", None)  # no terminal to measure
    options.setdefault("ncols", 100)
    options.setdefault("mininterval", NOTEBOOK_REFRESH_SECONDS)
    return tqdm(file=_DisplayLine(), disable=show is False, **options)
