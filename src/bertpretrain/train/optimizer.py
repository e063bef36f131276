"""BERT's optimizer, AdamW, as PyTorch defines it, and which parameters weight decay leaves alone.

MXNet 1.9.1 has no ``adamw`` optimizer, and its ``adam`` adds ``epsilon`` to ``sqrt(v)`` before the
bias correction, where PyTorch's ``torch.optim.AdamW`` (what Hugging Face trains BERT with) adds it
after; and MXNet's ``wd`` is an L2 term in the gradient, not a decoupled decay. :class:`AdamW` computes
PyTorch's update exactly, through MXNet's fused ``adamw_update`` operator with its learning rate and
epsilon rescaled::

    p = p * (1 - lr * wd)                                          (decoupled decay)
    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

Registered with MXNet under the name ``adamw`` on import (``optimizer='adamw'``; the class is also
what a checkpoint's pickled trainer state names).
"""
import math

import mxnet as mx

#: Name endings of the parameters BERT does not decay: LayerNorm's scale and shift, and every bias.
NO_DECAY_SUFFIXES = ("bias", "gamma", "beta")


def make_trainer(params, config, strategy, learning_rate):
    """The Trainer of a run: ``config``'s optimiser (a :class:`~bertpretrain.train.TrainingConfig`) over
    ``params`` ({structural name: Parameter}) at ``learning_rate``, made by ``strategy``. Its weight decay
    leaves LayerNorm and bias parameters alone; with ``accumulate_steps`` > 1 the parameters' gradients
    add up over the micro-batches of a step (``grad_req='add'``; the step zeroes them after the update)."""
    optimizer_params = {"learning_rate": learning_rate, **(config.optimizer_params or {})}
    if config.decay():
        optimizer_params["wd"] = config.decay()
        exclude_from_weight_decay(params)
    if config.accumulate_steps > 1:
        for param in params.values():
            param.grad_req = "add"
    return strategy.make_trainer(params, config.optimizer, optimizer_params)


def exclude_from_weight_decay(params):
    """Set ``wd_mult = 0`` on the LayerNorm and bias parameters of ``params`` ({name: Parameter}), as BERT
    does (its decay applies to the weight matrices and embeddings only); return their names."""
    excluded = [name for name in params if name.endswith(NO_DECAY_SUFFIXES)]
    for name in excluded:
        params[name].wd_mult = 0.0
    return excluded


@mx.optimizer.register
class AdamW(mx.optimizer.Optimizer):
    """PyTorch's AdamW (Loshchilov and Hutter, 2019): Adam with decoupled weight decay ``wd``.

    Args:
        learning_rate: the step size ``lr`` (set every step by the training loop's schedule).
        beta1, beta2, epsilon: Adam's, with PyTorch's defaults.
        wd: the decoupled decay rate (BERT: 0.01); a parameter's ``wd_mult`` scales it (0: not decayed).
    """

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon

    def create_state(self, index, weight):
        """Adam's first and second moments, zero, like ``weight``."""
        return (mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype).as_np_ndarray(),
                mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype).as_np_ndarray())

    def update(self, index, weight, grad, state):
        self._update_count(index)
        lr, wd = self._get_lr(index), self._get_wd(index)
        t = self._index_update_count[index]
        root_correction2 = math.sqrt(1.0 - self.beta2 ** t)
        mean, var = state
        # adamw_update: w -= eta * (lr' * m / (sqrt(v) + eps') + wd' * w). With lr' = lr sqrt(c2) / c1 and
        # eps' = eps sqrt(c2), lr' m / (sqrt(v) + eps') = lr / c1 * m / (sqrt(v) / sqrt(c2) + eps): PyTorch's
        # step; wd' = lr * wd is its decay of the weight before the step (the step does not read the weight).
        mx.nd.contrib.adamw_update(
            weight.as_nd_ndarray(), grad.as_nd_ndarray(), mean.as_nd_ndarray(), var.as_nd_ndarray(),
            rescale_grad=self.rescale_grad, lr=lr * root_correction2 / (1.0 - self.beta1 ** t),
            beta1=self.beta1, beta2=self.beta2, epsilon=self.epsilon * root_correction2, wd=lr * wd, eta=1.0,
            clip_gradient=self.clip_gradient or -1.0, out=weight.as_nd_ndarray())
