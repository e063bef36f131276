"""The record of a training run: per-step metrics, evaluations, and how the run ended."""
import html
import math
import statistics
from dataclasses import asdict, dataclass, field, fields

HISTORY_KEYS = ("step", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "seq_per_sec")


@dataclass(repr=False)
class TrainingHistory:
    """What :func:`~bertpretrain.train.train_bert` returns.

    The per-step lists under :data:`HISTORY_KEYS` have one entry per step (equal lengths); ``eval`` holds a
    dict per evaluation (with its ``step``). ``interrupted`` is True when Ctrl-C stopped the run;
    ``checkpoint`` is the last checkpoint written (or None); ``rank`` is this worker's rank (0 unless
    training is distributed) of ``workers``; ``precision`` is what the matrix products were computed in
    (``'fp32'`` or ``'bf16'``; after a resume, this run's). Each worker records the losses of its own shard; after a
    resume, the steps before it are rank 0's (the checkpoint's).

    ``history["mlm_loss"]`` reads a list as ``history.mlm_loss`` does; :meth:`to_dict` and
    :meth:`from_dict` make the JSON round trip (``history.json``, checkpoints) keep every attribute.
    ``repr(history)`` is a one-line summary (steps, the last step's losses and accuracies, the last evaluation,
    the median rate), a notebook shows it as a table, and :meth:`plot` draws the loss curves.
    """
    step: list = field(default_factory=list)
    mlm_loss: list = field(default_factory=list)
    nsp_loss: list = field(default_factory=list)
    mlm_acc: list = field(default_factory=list)
    nsp_acc: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seq_per_sec: list = field(default_factory=list)
    eval: list = field(default_factory=list)
    interrupted: bool = False
    checkpoint: str = None
    rank: int = 0
    workers: int = 1
    precision: str = None

    def __getitem__(self, key):
        """The list ``key`` (one of :data:`HISTORY_KEYS` or ``'eval'``)."""
        if key not in HISTORY_KEYS and key != "eval":
            raise KeyError(f"a training history has no {key!r}: it holds {', '.join(HISTORY_KEYS)} and 'eval'")
        return getattr(self, key)

    def record(self, step, lr, seq_per_sec, metrics):
        """Append one step: its number, learning rate, speed and ``metrics`` (mlm/nsp loss and accuracy)."""
        for key, value in (("step", step), ("lr", lr), ("seq_per_sec", seq_per_sec), *metrics.items()):
            self[key].append(value)

    def to_dict(self):
        """A JSON-serialisable dict of every field (lists copied)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        """The history that :meth:`to_dict` gave (keys it lacks, as in older checkpoints, keep their default)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: list(value) if isinstance(value, list) else value
                      for key, value in data.items() if key in known})

    def _summary(self):
        """(steps, median sequences/s, the last step's metrics or None, the last evaluation or None)."""
        last = {key: self[key][-1] for key in HISTORY_KEYS} if self.step else None
        rate = statistics.median(self.seq_per_sec) if self.seq_per_sec else None
        return len(self.step), rate, last, self.eval[-1] if self.eval else None

    def _status(self):
        """How the run stands beside its numbers: this worker's rank of several, and an interruption."""
        return ([f"rank {self.rank} of {self.workers}"] if self.workers > 1 else []) + (
            ["interrupted"] if self.interrupted else [])

    def __repr__(self):
        """One line, whatever the length of the run: the lists are ``history.mlm_loss`` and so on."""
        steps, rate, last, evaluation = self._summary()
        parts = [f"{steps} steps"]
        if last:
            parts.append(f"step {last['step']}: mlm loss {last['mlm_loss']:.3f} (acc {last['mlm_acc']:.3f}), "
                         f"nsp loss {last['nsp_loss']:.3f} (acc {last['nsp_acc']:.3f}), lr {last['lr']:.3g}")
        if evaluation:
            parts.append(f"eval at step {evaluation['step']}: mlm loss {evaluation['mlm_loss']:.3f} "
                         f"(acc {evaluation['mlm_acc']:.3f}), nsp loss {evaluation['nsp_loss']:.3f} "
                         f"(acc {evaluation['nsp_acc']:.3f})")
        if rate is not None:
            parts.append(f"{rate:,.0f} seq/s")
        return f"TrainingHistory({'; '.join(parts + self._status())})"

    def _repr_html_(self):
        """A table for notebooks: the last step and every evaluation (the last 10), with perplexities."""
        steps, rate, last, _ = self._summary()
        caption = [f"TrainingHistory: {steps} steps"]
        if rate is not None:
            caption.append(f"median {rate:,.0f} sequences/s")
        caption += self._status()
        if self.checkpoint:
            caption.append(f"checkpoint {self.checkpoint}")
        columns = ("step", "mlm_loss", "mlm_acc", "mlm_perplexity", "nsp_loss", "nsp_acc")
        rows = ([("train (last step)", dict(last, mlm_perplexity=math.exp(min(last["mlm_loss"], 700.0))))]
                if last else [])
        rows += [("held-out", evaluation) for evaluation in self.eval[-10:]]
        head = "".join(f"<th>{name.replace('_', ' ').replace('mlm', 'MLM').replace('nsp', 'NSP')}</th>"
                       for name in columns)
        body = "".join(f"<tr><th>{label}</th>" + "".join(f"<td>{_cell(row.get(name))}</td>" for name in columns)
                       + "</tr>" for label, row in rows)
        return (f"<table><caption>{html.escape(', '.join(caption))}</caption>"
                f"<thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>")

    def plot(self):
        """A matplotlib Figure of the loss curves (as the command's ``loss_curves.png``; see
        :func:`~bertpretrain.train.plot.draw_history`); in a notebook it displays as the cell's value, and
        ``figure.savefig(path)`` writes it. Needs matplotlib (``pip install 'bertpretrain[plot]'``)."""
        from .plot import history_figure
        return history_figure(self)


def _cell(value):
    """A table cell's text: an integer as is, a float to 4 significant digits, a missing value as a dash."""
    if value is None:
        return "&ndash;"
    return str(value) if isinstance(value, int) else f"{value:.4g}"
