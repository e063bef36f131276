"""The options of one training run, checked together before any work."""
from dataclasses import dataclass, fields

from mxnet import init

from ..model.ops import PRECISIONS
from .schedule import LearningRateSchedule

INITIALIZERS = ("xavier", "bert")


def make_initializer(name):
    """The initializer of the weights named ``name``: ``'xavier'`` (d2l: Xavier uniform) or ``'bert'``
    (the original BERT: normal with standard deviation 0.02). Biases and LayerNorm shifts start at 0 and
    LayerNorm scales at 1 either way (their own initializers)."""
    if name == "xavier":
        return init.Xavier()
    if name == "bert":
        return init.Normal(0.02)
    raise ValueError(f"initializer must be one of {INITIALIZERS}, got {name!r}")


@dataclass
class TrainingConfig:
    """Every option of :func:`~bertpretrain.train.train_bert` but the data, model, devices and vocabulary
    (the same names and defaults; see its docstring). :class:`~bertpretrain.recipe.PretrainOptions`
    builds one (``training_config``) and passes it as ``train_bert(..., **config.keywords())``.

    ``clip_global_norm`` clips the gradients' global L2 norm; MXNet's own ``clip_gradient`` (in
    ``optimizer_params``) clips each gradient element instead, which is why this one has another name.
    A bad value raises ValueError naming the argument, when the config is made.
    """
    num_steps: int = 50
    lr: float = 0.01
    optimizer: str = "adam"
    optimizer_params: dict = None
    warmup_steps: int = 0
    lr_decay: str = "none"
    clip_global_norm: float = None
    use_nsp: bool = True
    eval_interval: int = None
    checkpoint_dir: str = None
    checkpoint_interval: int = None
    keep_checkpoints: int = 2
    resume: bool = False
    kvstore: object = "device"
    progress: bool = None
    seed: int = None
    log_interval: int = 10
    initializer: str = "xavier"
    precision: str = "auto"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {self.num_steps!r}")
        if self.clip_global_norm is not None and not self.clip_global_norm > 0:
            raise ValueError(f"clip_global_norm must be a positive norm or None, got {self.clip_global_norm!r}")
        if self.checkpoint_interval is not None and (not isinstance(self.checkpoint_interval, int)
                                                     or self.checkpoint_interval < 1):
            raise ValueError(f"checkpoint_interval must be an integer >= 1 or None, got {self.checkpoint_interval!r}")
        if (self.resume or self.checkpoint_interval) and self.checkpoint_dir is None:
            raise ValueError("resume and checkpoint_interval need checkpoint_dir: the folder to keep checkpoints in")
        make_initializer(self.initializer)
        self.schedule()  # a bad lr, warm-up or decay fails here

    def schedule(self):
        """The :class:`LearningRateSchedule` of these options: the learning rate of each step."""
        return LearningRateSchedule(self.lr, self.num_steps, self.warmup_steps, self.lr_decay)

    def keywords(self):
        """{name: value} of every option: the keyword arguments of ``train_bert`` (not copied, unlike
        ``dataclasses.asdict``: a KVStore object stays the same object)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
