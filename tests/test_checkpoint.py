"""Checkpoints that resume refuses when it cannot trust them, and faults that name their file.

Full and read-only disks are small tmpfs mounts made by the test (root only; skipped elsewhere).
"""
import hashlib
import json
import os
import subprocess

import mxnet as mx
import pytest

from bertpretrain.data import load_data_wiki
from bertpretrain.model import BERTModel
from bertpretrain.train import latest_checkpoint, train_bert
from bertpretrain.train import checkpoint as ckpt
from bertpretrain.train.checkpoint import CheckpointError

TINY = dict(num_hiddens=32, ffn_num_hiddens=64, num_heads=2, num_layers=1, max_len=32, dropout=0.0)


def train(folder, num_steps, vocab=None, loader=None, resume=False, **model_options):
    train_iter, own_vocab = load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)
    vocab = vocab or own_vocab
    net = BERTModel(len(vocab), **{**TINY, **model_options})
    return train_bert(loader(train_iter) if loader else train_iter, net, devices=[mx.cpu()], num_steps=num_steps,
                      seed=1, progress=False, checkpoint_dir=str(folder), checkpoint_interval=2, resume=resume,
                      vocab=vocab)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint folder with step-2 and step-4 of a tiny run; tests copy it before damaging it."""
    folder = tmp_path_factory.mktemp("saved")
    train(folder, 4)
    return folder


@pytest.fixture
def checkpoints(saved, tmp_path):
    folder = tmp_path / "checkpoints"
    subprocess.run(["cp", "-a", str(saved), str(folder)], check=True)
    return folder


def test_state_records_the_size_and_sha256_of_every_checkpoint_file(checkpoints):
    state = json.loads((checkpoints / "step-00000004" / "state.json").read_text())
    assert sorted(state["files"]) == ["config.json", "model.params", "trainer.states", "vocab.json"]
    params = (checkpoints / "step-00000004" / "model.params").read_bytes()
    assert state["files"]["model.params"] == {"size": len(params), "sha256": hashlib.sha256(params).hexdigest()}


def as_format_v2(folder):
    """Rewrite the state.json of checkpoint ``folder`` as c41b35a wrote it: format v2, each file by its SHA-256."""
    path = folder / "state.json"
    state = json.loads(path.read_text())
    state.update(format="bertpretrain-checkpoint-v2",
                 files={name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in state["files"]})
    path.write_text(json.dumps(state))


def test_a_checkpoint_of_format_v2_resumes(checkpoints):
    for step in (2, 4):
        as_format_v2(checkpoints / f"step-{step:08d}")
    history = train(checkpoints, 6, resume=True)
    assert history["step"] == list(range(1, 7))
    assert json.loads((checkpoints / "step-00000006" / "state.json").read_text())["format"] == ckpt.FORMAT


def test_a_damaged_checkpoint_of_format_v2_is_refused(checkpoints):
    for step in (2, 4):
        as_format_v2(checkpoints / f"step-{step:08d}")
    flip_bytes(checkpoints / "step-00000004" / "model.params")
    with pytest.raises(CheckpointError, match=f"{checkpoints / 'step-00000004' / 'model.params'} cannot be "
                                              "trusted: its SHA-256 differs.*previous complete checkpoint is "
                                              f"{checkpoints / 'step-00000002'}"):
        train(checkpoints, 6, resume=True)


@pytest.mark.parametrize("options, differences", [
    ({"num_heads": 4}, ["num_heads: 2 in the checkpoint, 4 now"]),
    ({"activation": "gelu", "dropout": 0.1}, ["activation: 'relu' in the checkpoint, 'gelu' now",
                                              "dropout: 0.0 in the checkpoint, 0.1 now"]),
    ({"num_hiddens": 48, "num_heads": 2}, ["num_hiddens: 32 in the checkpoint, 48 now"]),
])
def test_resume_refuses_a_different_model_configuration(checkpoints, options, differences):
    with pytest.raises(CheckpointError) as error:
        train(checkpoints, 6, resume=True, **options)
    message = str(error.value)
    for difference in differences:
        assert difference in message
    assert "pass the same settings" in message and "new checkpoint folder" in message
    assert latest_checkpoint(str(checkpoints)).endswith("step-00000004")


def test_resume_refuses_a_permuted_vocabulary_of_the_same_size(checkpoints):
    _, vocab = load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)
    vocab._set_tokens(vocab.idx_to_token[:5] + vocab.idx_to_token[6:7] + vocab.idx_to_token[5:6]
                      + vocab.idx_to_token[7:])
    with pytest.raises(CheckpointError, match=r"vocabulary: (\d+) tokens in the checkpoint, \1 now, 2 ids map "
                                              r"to other tokens; first at id 5"):
        train(checkpoints, 6, vocab=vocab, resume=True)


def flip_bytes(path, count=50):
    data = bytearray(path.read_bytes())
    for i in range(count):
        data[len(data) // 2 + i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name, damage", [
    ("model.params", flip_bytes),
    ("trainer.states", lambda path: path.write_bytes(path.read_bytes()[:100])),
    ("config.json", lambda path: path.unlink()),
    ("state.json", lambda path: path.write_bytes(b'{"format": "bertpretrain-checkpoint-v2", "step": ')),
])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_offering_the_previous_one(checkpoints, name, damage):
    damage(checkpoints / "step-00000004" / name)
    with pytest.raises(CheckpointError) as error:
        train(checkpoints, 6, resume=True)
    message = str(error.value)
    assert str(checkpoints / "step-00000004" / name) in message
    assert f"previous complete checkpoint is {checkpoints / 'step-00000002'}" in message

    (checkpoints / "latest").write_text("step-00000002\n")  # the way out the message gives
    history = train(checkpoints, 6, resume=True)
    assert history["step"] == list(range(1, 7))


def test_latest_pointing_to_a_missing_folder_offers_the_previous_checkpoint(checkpoints):
    subprocess.run(["rm", "-r", str(checkpoints / "step-00000004")], check=True)
    with pytest.raises(CheckpointError, match="step-00000004, which is missing.*previous complete checkpoint is "
                                              ".*step-00000002"):
        latest_checkpoint(str(checkpoints))


def test_files_and_folders_are_synced_before_latest_moves(tmp_path, monkeypatch):
    synced, moves = set(), []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src, dst, **kwargs):
        real_replace(src, dst, **kwargs)
        moves.append((os.fspath(dst), set(synced)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    train(tmp_path, 2)
    synced_before_latest = next(done for dst, done in moves if dst == str(tmp_path / "latest"))
    folder = tmp_path / "step-00000002"
    for name in os.listdir(folder):
        staged = [p for p in synced_before_latest if p.endswith(f"/{name}") and ".step-00000002.tmp-" in p]
        assert staged, f"{name} was not synced before latest moved"
    assert any(p.startswith(str(tmp_path / ".step-00000002.tmp-")) and p.count("/") == str(folder).count("/")
               for p in synced_before_latest), "the checkpoint folder was not synced"
    assert str(tmp_path) in synced_before_latest, "the checkpoint directory was not synced"


class CountTaken:
    """Wraps a loader; counts the batches taken from it."""

    def __init__(self, loader):
        self.loader, self.taken = loader, 0

    def __iter__(self):
        for batch in self.loader:
            self.taken += 1
            yield batch


def test_a_read_only_checkpoint_folder_is_refused_before_the_first_step(tmpfs):
    folder, loaders = tmpfs("ro", "size=1m,ro"), []
    with pytest.raises(CheckpointError, match=f"{folder / 'checkpoints'} cannot be written .*before training"):
        train(folder / "checkpoints", 4, loader=lambda it: loaders.append(CountTaken(it)) or loaders[-1])
    assert loaders[0].taken == 0


@pytest.mark.parametrize("full_at", ["model.params", "trainer.states"])
def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmpfs, saved, full_at):
    sizes = {f.name: f.stat().st_size for f in (saved / "step-00000002").iterdir()}
    # room for one checkpoint, the files written before ``full_at`` in the next one, and half of ``full_at``
    order = ["config.json", "model.params", "trainer.states"]
    room = sum(sizes.values()) + sum(sizes[n] for n in order[:order.index(full_at)]) + sizes[full_at] // 2
    folder = tmpfs("small", f"size={room}")
    with pytest.raises(CheckpointError) as error:
        train(folder, 4)
    message = str(error.value)
    assert f"cannot write {folder / 'step-00000004' / full_at}: the disk is full" in message
    assert f"previous checkpoint {folder / 'step-00000002'} is kept" in message
    assert latest_checkpoint(str(folder)).endswith("step-00000002")
    assert sorted(os.listdir(folder)) == ["latest", "step-00000002"]
    ckpt.verify_checkpoint(str(folder / "step-00000002"), ckpt.read_state(str(folder / "step-00000002")))


@pytest.mark.parametrize("latest", [None, "", "\n", "hello\n", "step-abc\n"])
def test_without_a_usable_latest_resume_takes_the_newest_verified_checkpoint_and_says_so(checkpoints, latest, caplog):
    if latest is None:
        (checkpoints / "latest").unlink()
    else:
        (checkpoints / "latest").write_text(latest)
    flip_bytes(checkpoints / "step-00000004" / "model.params")  # the newest is damaged: step-2 is the one to take
    caplog.set_level("WARNING")
    history = train(checkpoints, 6, resume=True)
    assert history["step"] == list(range(1, 7))
    assert "resuming from the newest complete checkpoint" in caplog.text
    assert str(checkpoints / "step-00000002") in caplog.text
    assert (checkpoints / "latest").read_text().strip() == "step-00000006"


def test_without_a_usable_latest_and_no_checkpoint_that_verifies_resume_refuses_naming_them(checkpoints):
    (checkpoints / "latest").unlink()
    for step in ("step-00000002", "step-00000004"):
        flip_bytes(checkpoints / step / "model.params")
    with pytest.raises(CheckpointError) as error:
        train(checkpoints, 6, resume=True)
    message = str(error.value)
    assert f"{checkpoints / 'latest'} is missing" in message
    assert "step-00000002" in message and "step-00000004" in message and "new checkpoint folder" in message
    assert sorted(os.listdir(checkpoints)) == ["step-00000002", "step-00000004"], "nothing was overwritten"


@pytest.mark.parametrize("value", ["../evil", "/tmp/evil", "step-00000002/../../evil"])
def test_latest_naming_a_folder_outside_the_checkpoint_folder_is_refused(checkpoints, value):
    evil = checkpoints.parent / "evil"
    subprocess.run(["cp", "-a", str(checkpoints / "step-00000004"), str(evil)], check=True)
    (checkpoints / "latest").write_text(value + "\n")
    with pytest.raises(CheckpointError) as error:
        train(checkpoints, 6, resume=True)
    message = str(error.value)
    assert f"{checkpoints / 'latest'} names {value!r}, which is not a checkpoint in {checkpoints}" in message
    assert f"echo step-00000004 > {checkpoints / 'latest'}" in message


def test_resuming_a_finished_run_keeps_its_checkpoint_in_the_history(checkpoints):
    history = train(checkpoints, 4, resume=True)
    assert history["step"] == [1, 2, 3, 4]
    assert history.checkpoint == str(checkpoints / "step-00000004")
