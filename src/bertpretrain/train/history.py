"""The record of a training run: per-step metrics, evaluations, and how the run ended."""
from dataclasses import asdict, dataclass, field, fields

HISTORY_KEYS = ("step", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "seq_per_sec")


@dataclass
class TrainingHistory:
    """What :func:`~bertpretrain.train.train_bert` returns.

    The per-step lists under :data:`HISTORY_KEYS` have one entry per step (equal lengths); ``eval`` holds a
    dict per evaluation (with its ``step``). ``interrupted`` is True when Ctrl-C stopped the run;
    ``checkpoint`` is the last checkpoint written (or None); ``rank`` is this worker's rank (0 unless
    training is distributed) of ``workers``. Each worker records the losses of its own shard; after a resume, the steps
    before it are rank 0's (the checkpoint's).

    ``history["mlm_loss"]`` reads a list as ``history.mlm_loss`` does; :meth:`to_dict` and
    :meth:`from_dict` make the JSON round trip (``history.json``, checkpoints) keep every attribute.
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
