"""Learning-rate schedules: optional linear warm-up, then constant (d2l) or linear decay to zero."""


class LearningRateSchedule:
    """``schedule(step)`` is the learning rate for ``step`` (1-based). The values come checked from a
    :class:`~bertpretrain.train.TrainingConfig` (its ``schedule()``).

    Args:
        base_lr: the peak learning rate.
        num_steps: the last step of training (where linear decay reaches zero).
        warmup_steps: steps over which the rate grows linearly from ``base_lr / warmup_steps``.
        decay: ``'none'`` keeps ``base_lr`` after warm-up (d2l's run); ``'linear'`` decays it
            linearly to zero at ``num_steps`` (BERT's schedule).
    """

    def __init__(self, base_lr, num_steps, warmup_steps=0, decay="none"):
        self.base_lr, self.num_steps, self.warmup_steps, self.decay = base_lr, num_steps, warmup_steps, decay

    def __call__(self, step):
        if step <= self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        if self.decay == "linear":
            remaining = (self.num_steps - step + 1) / max(1, self.num_steps - self.warmup_steps)
            return self.base_lr * max(0.0, remaining)
        return self.base_lr
