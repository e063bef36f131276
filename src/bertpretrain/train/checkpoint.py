"""Checkpoints: everything needed to continue a run exactly, written so a crash never corrupts one.

A checkpoint is a folder ``step-00000050`` inside the checkpoint directory holding the model
(``config.json``, ``model.params``), the optimiser state (``trainer.states``), the vocabulary (when
known: ``vocab.json``, or ``tokenizer.json`` for a WordPiece tokenizer, named as
:func:`~bertpretrain.model.save_pretrained` names it) and ``state.json`` (step, seed, data position,
history, options, and a manifest of every other file: its size and SHA-256, see
:mod:`bertpretrain.files`). It is filled under a temporary name, its
files and folder are synced to disk and it is renamed into place
(:func:`~bertpretrain.files.atomic_folder`); only then does the ``latest`` file (itself replaced
atomically) point to it, and only then are older checkpoints pruned. A process killed while saving
thus leaves the previous checkpoint, and ``latest``, untouched; a disk that fills up does the same,
and says so.

On resume every file is checked against its recorded digest, and the saved model configuration
and vocabulary against the ones passed, so that a damaged checkpoint or a changed setting is
refused with the file or setting named instead of silently continuing.
"""
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile

from ..data import load_saved_vocab
from ..errors import UserError
from ..files import (CONFIG_FILE, DISK_FULL_ERRNOS, PARAMS_FILE, TMP_MARK, TOKENIZER_FILE, VOCAB_FILE, ManifestError,
                     atomic_folder, atomic_write, manifest, manifest_problem, read_manifest, remove_stale,
                     saved_vocab_file, vocab_file_name, write_manifest)
from ..model import BERTConfig, save_pretrained

FORMAT = "bertpretrain-checkpoint-v3"  # v2 recorded each file by its SHA-256 alone, v3 also by its size
_READABLE_FORMATS = ("bertpretrain-checkpoint-v2", FORMAT)
LATEST = "latest"
STATE_FILE = "state.json"
TRAINER_FILE = "trainer.states"
_VOCAB_KINDS = {VOCAB_FILE: "a word-level vocabulary", TOKENIZER_FILE: "a WordPiece tokenizer"}
_STEP_NAME = re.compile(r"step-[0-9]+")
logger = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be written or cannot be trusted for resuming; the message says what to do."""


def check_writable(folder, what="checkpoint folder"):
    """Create ``folder`` if needed and write a small temporary file in it (removed again), so that a
    read-only or unwritable folder is found before training rather than after it.

    Raises:
        CheckpointError: naming the folder and the reason.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"probe")
            probe.flush()
    except OSError as error:
        raise CheckpointError(f"the {what} {folder} cannot be written ({error.strerror or error}); checked "
                              "before training so that no work is lost: choose a writable folder "
                              "(--output-dir) or fix its permissions") from None


@contextlib.contextmanager
def _disk_full_names(folder, previous, name=None):
    """Turn "no space left" while writing file ``name`` of ``folder`` into a :class:`CheckpointError`
    that names the file, says the disk is full and that ``previous`` (the last complete checkpoint) is
    kept. ``name=None``: the file the error names, else the folder itself."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS:
            raise
        if name is None and error.filename and TMP_MARK not in os.path.basename(error.filename):
            name = os.path.basename(error.filename)
        path = os.path.join(folder, name) if name else folder
        kept = (f"the previous checkpoint {previous} is kept and resumable" if previous
                else "no earlier checkpoint exists")
        raise CheckpointError(f"cannot write {path}: the disk is full ({error.strerror}); {kept}. Free some "
                              "space (or choose a folder on another disk) and resume") from error


def save_checkpoint(directory, step, bert, trainer, state, vocab=None, keep=2):
    """Write the checkpoint of ``step`` and make it the latest; return its folder.

    Args:
        directory: the checkpoint directory (created if needed).
        step: the number of optimiser steps taken.
        bert: the :class:`~bertpretrain.model.BERTModel` being trained.
        trainer: its ``gluon.Trainer`` (optimiser state).
        state: a JSON-serialisable dict (step, seed, data position, history, ...).
        vocab: the vocabulary or tokenizer, saved beside the model (as save_pretrained saves it) so the
            folder is self-contained.
        keep: how many checkpoints to keep (older ones are deleted after the new one is in place).
    Raises:
        CheckpointError: the disk is full (naming the file; the previous checkpoint stays the latest).
    """
    os.makedirs(directory, exist_ok=True)
    name = f"step-{step:08d}"
    final = os.path.join(directory, name)
    previous = _latest_step_name(directory)
    previous = os.path.join(directory, previous) if previous else None
    # Files written through bertpretrain.files name themselves in a disk-full error; the trainer's does not.
    with _disk_full_names(final, previous), atomic_folder(final) as staging:
        save_pretrained(bert, staging, vocab=vocab)
        with _disk_full_names(final, previous, TRAINER_FILE):
            trainer.save_states(os.path.join(staging, TRAINER_FILE))
        files = manifest(staging, sorted(os.listdir(staging)))
        write_manifest(os.path.join(staging, STATE_FILE), files, format=FORMAT, **state)
    with _disk_full_names(directory, previous, LATEST):
        atomic_write(os.path.join(directory, LATEST), name + "\n")
    _prune(directory, keep, current=name)
    return final


def _prune(directory, keep, current):
    """Delete all but the ``keep`` newest checkpoints, and leftovers of interrupted saves (one process
    writes a checkpoint folder, so any temporary name in it is a leftover)."""
    for name in _checkpoint_names(directory)[:-keep] if keep else []:
        if name != current:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    remove_stale(directory, older_than=0)


def _checkpoint_names(directory):
    """The ``step-N`` folder names in ``directory``, oldest first."""
    try:
        names = [n for n in os.listdir(directory)
                 if _STEP_NAME.fullmatch(n) and os.path.isdir(os.path.join(directory, n))]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(names, key=lambda n: int(n[len("step-"):]))


def _read_latest_name(directory):
    """What ``latest`` holds, stripped (None when the file is missing or empty)."""
    try:
        with open(os.path.join(directory, LATEST), encoding="utf-8", errors="replace") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def _latest_step_name(directory):
    """The checkpoint name ``latest`` holds when it is one (``step-N``), else None."""
    name = _read_latest_name(directory)
    return name if name is not None and _STEP_NAME.fullmatch(name) else None


def _newest_complete(directory, before=None):
    """The folder of the newest checkpoint in ``directory`` (older than the name ``before``, if given) whose
    state and files verify, or None."""
    names = _checkpoint_names(directory)
    if before is not None and _STEP_NAME.fullmatch(before):
        names = [n for n in names if int(n[len("step-"):]) < int(before[len("step-"):])]
    for name in reversed(names):
        folder = os.path.join(directory, name)
        try:
            verify_checkpoint(folder, read_state(folder, offer_previous=False), offer_previous=False)
        except CheckpointError:
            continue
        return folder
    return None


def _previous_complete(directory, before=None):
    """A sentence offering the newest checkpoint (older than ``before``) that verifies, or saying there is none."""
    folder = _newest_complete(directory, before)
    older = before is not None and _STEP_NAME.fullmatch(before)
    if folder is None:
        return f"there is no {'earlier ' if older else ''}complete checkpoint: start afresh in a new checkpoint folder"
    previous = "previous" if older else "newest"
    return (f"the {previous} complete checkpoint is {folder}: resume from it with "
            f"`echo {os.path.basename(folder)} > {os.path.join(directory, LATEST)}`, or start afresh in a new "
            "checkpoint folder")


def latest_checkpoint(directory):
    """The folder of the checkpoint to resume from in ``directory``, or None when there is none.

    That is the one ``latest`` names. Without a usable ``latest`` (missing, empty, or holding no checkpoint
    name) it is the newest checkpoint whose files verify, with a warning saying which; a run never restarts
    from step 0 beside checkpoints it could have resumed.

    Raises:
        CheckpointError: ``latest`` names a folder outside ``directory`` (a path, not a ``step-N`` name), or a
            checkpoint that is missing or incomplete; or there is no usable ``latest`` and none of the
            checkpoints verifies. The message offers the newest complete checkpoint, if any.
    """
    path = os.path.join(directory, LATEST)
    name = _read_latest_name(directory)
    if name is not None and _STEP_NAME.fullmatch(name):
        folder = os.path.join(directory, name)
        if not os.path.isfile(os.path.join(folder, STATE_FILE)):
            raise CheckpointError(f"{path} points to {name}, which is missing or incomplete; "
                                  f"{_previous_complete(directory, name)}")
        return folder
    if name is not None and (os.path.isabs(name) or "/" in name or os.sep in name or name in (".", "..")):
        raise CheckpointError(f"{path} names {name!r}, which is not a checkpoint in {directory} (latest holds the "
                              f"name of a step-N folder beside it, never a path); {_previous_complete(directory)}")
    names = _checkpoint_names(directory)
    if name is None:
        why = f"{path} is missing" if not os.path.exists(path) else f"{path} is empty"
    else:
        why = f"{path} holds {name!r}, not the name of a checkpoint (step-N)"
    if not names:
        if name is not None:
            logger.warning("%s and %s holds no checkpoint: starting from step 0", why, directory)
        return None
    folder = _newest_complete(directory)
    if folder is None:
        raise CheckpointError(f"{why}, and none of the checkpoints in {directory} ({', '.join(names)}) is complete "
                              "and intact (each was checked against the SHA-256 sums in its state.json): start "
                              "afresh in a new checkpoint folder (--output-dir), or remove these folders to "
                              "start from step 0 here")
    logger.warning("%s: resuming from the newest complete checkpoint, %s (checked against its recorded SHA-256 "
                   "sums)", why, folder)
    return folder


def read_state(folder, offer_previous=True):
    """The ``state.json`` of a checkpoint folder, checked to be one this version can resume.

    Raises:
        CheckpointError: the file is unreadable, not JSON, or of another format (naming the file and,
            with ``offer_previous``, the previous complete checkpoint).
    """
    path = os.path.join(folder, STATE_FILE)
    try:
        state = read_manifest(path, legacy=_state_v2)
        problem = None
    except OSError as error:  # missing, unreadable
        problem = f"it cannot be read ({error})"
    except ManifestError as error:  # not UTF-8, not JSON, no file records
        problem = f"it is not a checkpoint state with the checksums of its files ({error})"
    if problem is None and state.get("format") not in _READABLE_FORMATS:
        problem = (f"it is of format {state.get('format')!r}, not one of {_READABLE_FORMATS}, which this "
                   "version resumes")
    if problem:
        raise _untrusted(folder, path, problem, offer_previous)
    return state


def _state_v2(state):
    """A ``state.json`` of format v2 (each file recorded by its SHA-256 alone) as a manifest."""
    return {**state, "files": {name: {"sha256": sha256} for name, sha256 in state["files"].items()}}


def verify_checkpoint(folder, state, offer_previous=True):
    """Check every file of the checkpoint against the size and SHA-256 recorded in its ``state``.

    Raises:
        CheckpointError: a file is missing, truncated or altered (naming it and, with ``offer_previous``,
            the previous complete checkpoint).
    """
    mismatch = manifest_problem(folder, state["files"])
    if mismatch is not None:
        name, problem = mismatch
        raise _untrusted(folder, os.path.join(folder, name), f"{problem} (checked against the record made when "
                         "the checkpoint was saved: the file is damaged)", offer_previous)


def _untrusted(folder, path, problem, offer_previous):
    directory, name = os.path.split(os.path.abspath(folder))
    offer = f"; {_previous_complete(directory, name)}" if offer_previous else ""
    return CheckpointError(f"checkpoint file {path} cannot be trusted: {problem}{offer}")


def check_compatible(folder, config, vocab):
    """Refuse to resume the checkpoint in ``folder`` with a different model configuration or vocabulary.

    Args:
        folder: a verified checkpoint folder.
        config: the :class:`~bertpretrain.model.BERTConfig` of the model passed to train_bert.
        vocab: the :class:`~bertpretrain.data.Vocab` or tokenizer passed to train_bert, or None (then not
            compared).
    Raises:
        CheckpointError: listing every setting that differs (saved and passed value: the configuration, the
            kind of tokenizer, its tokens) and the two ways out.
    """
    with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
        saved = json.load(f)
    with contextlib.suppress(TypeError, ValueError):  # fields it predates read as they were (see from_dict);
        saved = BERTConfig.from_dict(saved).to_dict()  # one it cannot read is compared key by key below
    passed = config.to_dict()
    differences = [f"{key}: {saved.get(key)!r} in the checkpoint, {passed.get(key)!r} now"
                   for key in sorted(set(saved) | set(passed)) if saved.get(key) != passed.get(key)]
    vocab_path = saved_vocab_file(folder)
    if vocab is not None and vocab_path is not None:
        saved_name, name = os.path.basename(vocab_path), vocab_file_name(vocab)
        if saved_name != name:
            differences.append(f"tokenizer: {_VOCAB_KINDS[saved_name]} ({saved_name}) in the checkpoint, "
                               f"{_VOCAB_KINDS[name]} ({name}) now")
        saved_tokens = load_saved_vocab(folder).idx_to_token
        tokens = list(vocab.idx_to_token)
        if saved_tokens != tokens:
            moved = [i for i, (a, b) in enumerate(zip(saved_tokens, tokens)) if a != b]
            first = (f"; first at id {moved[0]}: {saved_tokens[moved[0]]!r} in the checkpoint, "
                     f"{tokens[moved[0]]!r} now" if moved else "")
            differences.append(f"vocabulary: {len(saved_tokens)} tokens in the checkpoint, {len(tokens)} now, "
                               f"{len(moved)} ids map to other tokens{first}")
    if differences:
        raise CheckpointError(
            f"cannot resume from {folder}: the model or vocabulary passed differs from the checkpoint's:\n  "
            + "\n  ".join(differences) + "\nEither pass the same settings (and data) as the checkpoint, or "
            "use a new checkpoint folder (--output-dir) to start a new run")


class Checkpointer:
    """The checkpoints of one run in ``directory``: resume (verified and checked against the model and
    vocabulary), save every ``interval`` steps (and when asked), prune to the ``keep`` newest.

    ``writes=False`` (a worker other than rank 0, or no ``directory``) reads a checkpoint to resume but
    never writes one. ``saved_step`` is the step of the last checkpoint saved or resumed (None: none yet).
    """

    def __init__(self, directory, interval=None, keep=2, writes=True):
        self.directory, self.interval, self.keep = directory, interval, keep
        self.writes = writes and directory is not None
        self.saved_step = None

    def check_writable(self):
        """Fail before the first step if the folder cannot be written (a read-only folder must not cost a run)."""
        if self.writes:
            check_writable(self.directory)

    def latest(self):
        """The latest complete checkpoint's folder, or None."""
        return latest_checkpoint(self.directory) if self.directory is not None else None

    def resume(self, bert, trainer, devices, vocab=None):
        """Load the latest checkpoint into ``bert`` (on ``devices``) and ``trainer``; return ``(folder, state,
        vocab)`` (the vocabulary passed, else the checkpoint's, else None), or None when there is none yet.

        Raises:
            CheckpointError: the checkpoint is damaged, or was saved with another configuration or vocabulary.
        """
        source = self.latest()
        if source is None:
            return None
        state = read_state(source)
        verify_checkpoint(source, state)
        check_compatible(source, bert.config, vocab)
        bert.load_parameters(os.path.join(source, PARAMS_FILE), ctx=devices)
        trainer.load_states(os.path.join(source, TRAINER_FILE))
        if vocab is None:
            vocab = load_saved_vocab(source)
        self.saved_step = state["step"]
        return source, state, vocab

    def due(self, step, num_steps):
        """Whether the interval asks for a checkpoint after ``step`` (the last step is saved anyway)."""
        return bool(self.interval) and step % self.interval == 0 and step < num_steps

    def save(self, step, bert, trainer, state, vocab=None):
        """Write the checkpoint of ``step`` (see :func:`save_checkpoint`) and return its folder; None when
        this checkpointer does not write."""
        if not self.writes:
            return None
        folder = save_checkpoint(self.directory, step, bert, trainer, state, vocab, self.keep)
        self.saved_step = step
        return folder
