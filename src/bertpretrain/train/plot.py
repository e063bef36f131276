"""Loss curves of a training history as a PNG (needs matplotlib: ``pip install 'bertpretrain[plot]'``)."""
import os

from ..files import atomic_path


def plot_history(history, path):
    """Draw the per-step MLM and NSP losses (and evaluation points) of ``history`` into the PNG ``path``.

    The file is written to a temporary name and renamed, so a crash never leaves a broken image.
    Raises ImportError with the install command when matplotlib is missing.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        raise ImportError("plotting the loss curves needs matplotlib: pip install 'bertpretrain[plot]'") from None
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in zip(axes, ("mlm_loss", "nsp_loss"), ("masked LM loss", "next-sentence loss")):
        ax.plot(history["step"], history[key], label="train", linewidth=1.2)
        evals = history["eval"]
        if evals:
            ax.plot([e["step"] for e in evals], [e[key] for e in evals], "o", label="held-out")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(figure)
    return path
