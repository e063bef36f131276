"""Checkpoints: everything needed to continue a run exactly, written so a crash never corrupts one.

A checkpoint is a folder ``step-00000050`` inside the checkpoint directory holding the model
(``config.json``, ``model.params``), the optimiser state (``trainer.states``), the vocabulary
(``vocab.json``, when known) and ``state.json`` (step, seed, data position, history, options).
It is written under a temporary name and renamed into place; only then does the ``latest`` file
(itself replaced atomically) point to it, and only then are older checkpoints pruned. A process
killed while saving thus leaves the previous checkpoint, and ``latest``, untouched.
"""
import json
import os
import shutil
import tempfile

from ..files import PARAMS_FILE, VOCAB_FILE  # noqa: F401  (PARAMS_FILE: read by loop.py as ckpt.PARAMS_FILE)
from ..model import save_pretrained

FORMAT = "bertpretrain-checkpoint-v1"
LATEST = "latest"
STATE_FILE = "state.json"
TRAINER_FILE = "trainer.states"


def _write_text_atomically(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory, step, bert, trainer, state, vocab=None, keep=2):
    """Write the checkpoint of ``step`` and make it the latest; return its folder.

    Args:
        directory: the checkpoint directory (created if needed).
        step: the number of optimiser steps taken.
        bert: the :class:`~bertpretrain.model.BERTModel` being trained.
        trainer: its ``gluon.Trainer`` (optimiser state).
        state: a JSON-serialisable dict (step, seed, data position, history, ...).
        vocab: the vocabulary, saved beside the model so the folder is self-contained.
        keep: how many checkpoints to keep (older ones are deleted after the new one is in place).
    """
    os.makedirs(directory, exist_ok=True)
    name = f"step-{step:08d}"
    final = os.path.join(directory, name)
    staging = tempfile.mkdtemp(dir=directory, prefix=f".{name}.tmp-")
    try:
        save_pretrained(bert, staging)
        trainer.save_states(os.path.join(staging, TRAINER_FILE))
        if vocab is not None:
            vocab.save(os.path.join(staging, VOCAB_FILE))
        with open(os.path.join(staging, STATE_FILE), "w") as f:
            json.dump({"format": FORMAT, **state}, f)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_text_atomically(os.path.join(directory, LATEST), name + "\n")
    _prune(directory, keep, current=name)
    return final


def _prune(directory, keep, current):
    """Delete all but the ``keep`` newest checkpoints, and leftovers of interrupted saves."""
    names = sorted(n for n in os.listdir(directory) if n.startswith("step-") and not n.endswith(".tmp"))
    for name in names[:-keep] if keep else []:
        if name != current:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    for name in os.listdir(directory):
        if name.startswith(".step-") and ".tmp-" in name:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def latest_checkpoint(directory):
    """The folder of the latest complete checkpoint in ``directory``, or None if there is none."""
    try:
        with open(os.path.join(directory, LATEST)) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    folder = os.path.join(directory, name)
    if not os.path.isfile(os.path.join(folder, STATE_FILE)):
        raise RuntimeError(f"{directory}/{LATEST} points to {name}, which is missing or incomplete; "
                           f"remove {LATEST} to start afresh or point it to an existing step-* folder")
    return folder


def read_state(folder):
    """The ``state.json`` of a checkpoint folder, checked to be one this version can resume."""
    with open(os.path.join(folder, STATE_FILE)) as f:
        state = json.load(f)
    if state.get("format") != FORMAT:
        raise RuntimeError(f"{folder} holds a checkpoint of format {state.get('format')!r}, not {FORMAT!r}; "
                           "it cannot be resumed by this version of bertpretrain")
    return state
