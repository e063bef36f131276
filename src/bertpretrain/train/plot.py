"""Loss curves of a training history as a PNG (needs matplotlib: ``pip install 'bertpretrain[plot]'``)."""
import os
import tempfile


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
        evals = history.get("eval") or []
        if evals:
            ax.plot([e["step"] for e in evals], [e[key] for e in evals], "o", label="held-out")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".plot-", suffix=".png")
    os.close(fd)
    try:
        figure.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
