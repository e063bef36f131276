"""The options of one training run, declared once (default, help, check) and checked together before any work."""
import os
from dataclasses import dataclass
from typing import Optional

from mxnet import init, optimizer as mx_optimizer

from ..model.ops import PRECISIONS
from ..options import OptionError, boolean, integer, number, option, validate
from . import optimizer as _registers_adamw  # noqa: F401  (MXNet's optimizer registry gains 'adamw')
from .schedule import LearningRateSchedule

INITIALIZERS = ("xavier", "bert")
LR_DECAYS = ("none", "linear")


def make_initializer(name):
    """The initializer of the weights named ``name``: ``'xavier'`` (d2l: Xavier uniform) or ``'bert'``
    (the original BERT: normal with standard deviation 0.02). Biases and LayerNorm shifts start at 0 and
    LayerNorm scales at 1 either way (their own initializers)."""
    return init.Xavier() if name == "xavier" else init.Normal(0.02)


def _kvstore(value):
    """The check of ``kvstore``: a local kvstore, a ``dist_*`` one, or Horovod."""
    if value is None or (isinstance(value, str) and (value in ("device", "local", "horovod")
                                                      or value.startswith("dist_"))):
        return None
    return "'device' or 'local' (one process), 'dist_sync' (under 'bertpretrain launch') or 'horovod'"


def _optimizer(value):
    """The check of ``optimizer``: a name in MXNet's optimizer registry (which holds ``adamw`` too)."""
    if isinstance(value, str) and value.lower() in mx_optimizer.Optimizer.opt_registry:
        return None
    return "adamw, adam, sgd or another MXNet optimiser name"


def _plot(value):
    """The check of ``plot``: True, False, None, or the path of a PNG file."""
    if isinstance(value, bool) or value is None or (isinstance(value, (str, os.PathLike))
                                                    and os.fspath(value).lower().endswith(".png")):
        return None
    return "True (live in a notebook), False or the path of a .png file to redraw"


@dataclass
class TrainingConfig:
    """Every option of :func:`~bertpretrain.train.train_bert` but the data, model, devices and vocabulary.

    The defaults are d2l's run (Adam at lr 0.01, Xavier initialisation, no schedule); the command's recipe
    differs only through its preset (:data:`bertpretrain.recipe.PRESETS`). A bad value raises
    :class:`~bertpretrain.options.OptionError` naming the option and its command-line flag, when the config
    is made: one check for Python and the command alike.

    ``clip_global_norm`` clips the gradients' global L2 norm; MXNet's own ``clip_gradient`` (in
    ``optimizer_params``) clips each gradient element instead, which is why this one has another name.
    """
    num_steps: int = option(50, "optimiser steps to reach, counted from the start (resumed steps included)",
                            check=integer(1))
    lr: float = option(0.01, "peak learning rate", check=number(greater_than=0))
    optimizer: str = option("adam", "adamw (BERT's: PyTorch's AdamW, decoupled weight decay) or any MXNet "
                            "optimiser by name (adam: d2l's)", check=_optimizer)
    optimizer_params: Optional[dict] = option(None, "more keyword arguments of the MXNet optimiser", cli=False)
    weight_decay: Optional[float] = option(None, "weight decay of the weight matrices and embeddings, never of "
                                           "LayerNorm and biases (none: 0.01 with adamw, as BERT; 0 otherwise)",
                                           check=number(at_least=0, optional=True))
    accumulate_steps: int = option(1, "add up the gradients of N batches before each update: the global batch is "
                                   "batch size x N x workers", check=integer(1), metavar="N")
    warmup_steps: int = option(0, "steps of linear learning-rate warm-up", check=integer(0))
    lr_decay: str = option("none", "after warm-up: constant (d2l) or linear decay to zero (BERT)", choices=LR_DECAYS)
    clip_global_norm: Optional[float] = option(None, "clip the gradients' global L2 norm to this value",
                                               check=number(greater_than=0, optional=True))
    use_nsp: bool = option(True, "add the next-sentence loss to the masked-LM loss", flag="--no-nsp",
                           check=boolean())
    nsp_weight: float = option(1.0, "what the next-sentence loss is multiplied by in the sum (BERT's: 1)",
                               check=number(greater_than=0))
    eval_interval: Optional[int] = option(None, "also evaluate on the held-out split every N steps (always at the "
                                          "end)", check=integer(1, optional=True), metavar="N")
    checkpoint_dir: Optional[str] = option(None, "the folder to keep checkpoints in (None: no checkpoints)",
                                           cli=False)
    checkpoint_interval: Optional[int] = option(None, "also checkpoint every N steps (always at the end and on "
                                                "Ctrl-C)", check=integer(1, optional=True), metavar="N")
    keep_checkpoints: int = option(2, "how many checkpoints to keep", check=integer(1))
    resume: bool = option(False, "continue from the latest checkpoint", check=boolean())
    kvstore: Optional[str] = option("device", "how gradients are combined: device (one process), dist_sync "
                                    "(under 'bertpretrain launch') or horovod (under horovodrun)", check=_kvstore)
    progress: Optional[bool] = option(None, "show the progress bar (default: where it updates in place: on a "
                                      "terminal, or in a notebook as one output line)",
                                      check=boolean(optional=True))
    seed: Optional[int] = option(None, "seeds the initialisation and dropout (the command: the data too; none: a "
                                 "random seed, logged)", check=integer(0, optional=True))
    log_interval: Optional[int] = option(10, "log a line every N steps (0: the last step only)",
                                         check=integer(0, optional=True), metavar="N")
    initializer: str = option("xavier", "how weights start: xavier (d2l) or bert (normal, std 0.02)",
                              choices=INITIALIZERS)
    precision: str = option("auto", "the matrix products' precision: bf16 (bfloat16 operands, float32 sums; on CPUs "
                            "with AVX512_BF16 and the fused kernels), fp32, or auto (bf16 where it runs, logged); "
                            "weights, gradients, optimizer states and checkpoints stay float32", choices=PRECISIONS)
    plot: object = option(False, "redraw the loss curves every log_interval steps: True in a notebook (one figure "
                          "updated in place), or the path of a PNG file rewritten as training goes", check=_plot,
                          cli=False)

    def __post_init__(self):
        validate(self)
        if self.weight_decay is not None and "wd" in (self.optimizer_params or {}):
            raise OptionError("pass weight_decay (--weight-decay) or optimizer_params['wd'], not both")
        if (self.resume or self.checkpoint_interval) and self.checkpoint_dir is None:
            raise OptionError("resume and checkpoint_interval need checkpoint_dir: the folder to keep checkpoints in")

    def decay(self):
        """The weight decay rate the optimiser applies (see ``weight_decay``)."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.optimizer.lower() == "adamw" else 0.0

    def schedule(self):
        """The :class:`LearningRateSchedule` of these options: the learning rate of each step."""
        return LearningRateSchedule(self.lr, self.num_steps, self.warmup_steps, self.lr_decay)
