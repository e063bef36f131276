"""Hugging Face export and import: bit-exact round trips here, and the real transformers in a separate process.

The transformers checks run ``tests/hf_reference.py`` under a Python that has ``transformers`` and CPU
``torch`` (the two frameworks never share a process with MXNet): ``$BERTPRETRAIN_HF_PYTHON``, else
``.venv-hf-check/bin/python`` in the checkout (which ``.ci/run`` creates), else this Python if it has them.
"""
import json
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="the 'tokenizers' package is not installed: pip install 'bertpretrain[hf]'")
pytest.importorskip("safetensors", reason="the 'safetensors' package is not installed: pip install 'bertpretrain[hf]'")

import mxnet as mx  # noqa: E402

from bertpretrain.data import (PAD_ID, Vocab, download_extract, get_tokens_and_segments,  # noqa: E402
                               load_tokenizer, train_wordpiece)
from bertpretrain.hf import export_huggingface, import_huggingface  # noqa: E402
from bertpretrain.model import BERTModel  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "hf_reference.py"
BERT = dict(activation="gelu", embedding_layer_norm=True, layer_norm_eps=1e-12)
SENTENCES = ["The game was released in Japan .", "unbelievably , the <unk> crane flew over the river"]
PAIRS = [["the crane is flying", "he just left"], ["In 2010 , the team won", "zzyzx qwerty"]]


@pytest.fixture(scope="module")
def sample_file():
    return os.path.join(download_extract("wikitext-2-sample"), "wiki.train.tokens")


@pytest.fixture(scope="module")
def wordpiece(sample_file):
    return train_wordpiece([sample_file], vocab_size=700)


@pytest.fixture(scope="module")
def word_vocab(sample_file):
    with open(sample_file, encoding="utf-8") as f:
        return Vocab(f.read().lower().split(), min_freq=3)


def _model(vocab_size, tied, activation="gelu", seed=0):
    mx.random.seed(seed)
    net = BERTModel(vocab_size, num_hiddens=32, ffn_num_hiddens=48, num_heads=4, num_layers=2, max_len=40,
                    dropout=0.1, tie_mlm_weights=tied, **dict(BERT, activation=activation))
    net.initialize(mx.init.Normal(0.1))
    for name, param in net.collect_params().items():  # non-trivial LayerNorm and biases: mix-ups show
        if name.endswith(("bias", "beta", "gamma")):
            param.set_data(param.data() + mx.np.random.normal(0, 0.1, param.shape))
    return net


def _batch(vocab_size, seed=0):
    """Three padded examples: tokens, segments (B, 12), valid_lens (B,), pred_positions (B, 3)."""
    rng = np.random.default_rng(seed)
    valid = np.array([12, 7, 5], dtype=np.int32)
    tokens = rng.integers(5, vocab_size, (3, 12)).astype(np.int32)
    segments = np.broadcast_to((np.arange(12) >= 4).astype(np.int32), (3, 12)).copy()
    padding = np.arange(12) >= valid[:, None]
    tokens[padding], segments[padding] = PAD_ID, 0
    positions = np.array([[1, 2, 9], [1, 5, 6], [2, 3, 4]], dtype=np.int32)
    return tokens, segments, valid, positions


def _outputs(net, batch):
    encoded, mlm, nsp = net(*(mx.np.array(a, dtype="int32") for a in batch))
    return encoded.asnumpy(), mlm.asnumpy(), nsp.asnumpy()


def _parameters(net):
    return {name.split("_", 1)[-1]: p.data().asnumpy() for name, p in net.collect_params().items()}


@pytest.mark.parametrize("tied, activation, use_wordpiece", [(True, "gelu", True), (False, "relu", False)])
def test_export_then_import_is_bit_exact(tmp_path, wordpiece, word_vocab, tied, activation, use_wordpiece):
    vocab = wordpiece if use_wordpiece else word_vocab
    net = _model(len(vocab), tied, activation)
    folder = export_huggingface(net, vocab, str(tmp_path / "hf"))
    names = sorted(os.listdir(folder))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(names)
    assert ("vocab.txt" in names) == use_wordpiece
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["tie_word_embeddings"] == tied
    assert config["hidden_act"] == activation and config["layer_norm_eps"] == 1e-12

    again, tokenizer = import_huggingface(folder)
    assert again.config == net.config
    before, after = _parameters(net), _parameters(again)
    assert len(before) == len(after)
    for (name, a), b in zip(sorted(before.items()), [v for _, v in sorted(after.items())]):
        assert a.tobytes() == b.tobytes(), name
    batch = _batch(len(vocab))
    for a, b in zip(_outputs(net, batch), _outputs(again, batch)):
        assert a.tobytes() == b.tobytes()
    assert tokenizer.idx_to_token == vocab.idx_to_token and type(tokenizer) is type(vocab)


def test_a_model_huggingface_cannot_express_is_refused(tmp_path, word_vocab):
    net = BERTModel(len(word_vocab))  # d2l's default: no LayerNorm after the embeddings
    net.initialize()
    with pytest.raises(ValueError, match="embedding_layer_norm=True"):
        export_huggingface(net, word_vocab, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists(), "something was written for a refused model"
    with pytest.raises(ValueError, match="vocab_size is 1234"):
        export_huggingface(_model(1234, True), word_vocab, str(tmp_path / "out"))
    pre_ln = BERTModel(len(word_vocab), activation="gelu", embedding_layer_norm=True, pre_layer_norm=True)
    pre_ln.initialize()
    with pytest.raises(ValueError, match="pre-LN .*--architecture bert"):
        export_huggingface(pre_ln, word_vocab, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_import_errors_and_model_only_folders(tmp_path, word_vocab, caplog):
    folder = tmp_path / "hf"
    export_huggingface(_model(len(word_vocab), True), word_vocab, str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        os.remove(folder / name)
    with caplog.at_level(logging.WARNING, logger="bertpretrain.hf"):
        net, tokenizer = import_huggingface(str(folder))
    assert tokenizer is None and "no tokenizer" in caplog.text
    assert net.config.vocab_size == len(word_vocab)

    os.replace(folder / "model.safetensors", folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin.*safe_serialization=True"):
        import_huggingface(str(folder))
    with pytest.raises(FileNotFoundError, match="config.json"):
        import_huggingface(str(tmp_path / "empty"))


def _reference_python():
    """A Python with transformers and torch, or None."""
    candidates = [os.environ.get("BERTPRETRAIN_HF_PYTHON"), str(ROOT / ".venv-hf-check" / "bin" / "python"),
                  sys.executable]
    for python in filter(None, candidates):
        if os.path.isfile(python) and subprocess.run([python, "-c", "import transformers, torch"],
                                                     capture_output=True).returncode == 0:
            return python
    return None


@pytest.fixture(scope="module")
def reference():
    python = _reference_python()
    if python is None:
        pytest.skip("transformers and CPU torch are not installed anywhere this test looks: run .ci/run, or "
                    "create a venv with tests/requirements-hf-check.txt and set BERTPRETRAIN_HF_PYTHON to its python")

    def run(*args):
        result = subprocess.run([python, str(REFERENCE), *map(str, args)], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        return result.stdout + result.stderr
    return run


def _transformers_outputs(reference, folder, batch, tmp_path):
    tokens, segments, valid, positions = batch
    np.savez(tmp_path / "in.npz", input_ids=tokens, token_type_ids=segments, pred_positions=positions,
             attention_mask=(np.arange(tokens.shape[1]) < valid[:, None]).astype(np.int32))
    log = reference("outputs", folder, tmp_path / "in.npz", tmp_path / "out.npz")
    assert "MISSING" not in log and "UNEXPECTED" not in log and "newly initialized" not in log, log
    out = np.load(tmp_path / "out.npz")
    return out["encoded"], out["mlm_logits"], out["nsp_logits"]


@pytest.mark.parametrize("tied", [True, False])
def test_exported_model_matches_transformers(tmp_path, reference, wordpiece, tied):
    net = _model(len(wordpiece), tied)
    folder = export_huggingface(net, wordpiece, str(tmp_path / "hf"))
    batch = _batch(len(wordpiece))
    ours = _outputs(net, batch)
    theirs = _transformers_outputs(reference, folder, batch, tmp_path)
    real = np.arange(12) < batch[2][:, None]  # padding positions: only their effect on real ones counts
    assert np.abs(ours[0] - theirs[0])[real].max() < 1e-4
    assert np.abs(ours[1] - theirs[1]).max() < 1e-4
    assert np.abs(ours[2] - theirs[2]).max() < 1e-4


def test_autotokenizer_gives_our_ids(tmp_path, reference, wordpiece, word_vocab):
    texts = [[s] for s in SENTENCES] + PAIRS
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    for name, vocab, split in (("wordpiece", wordpiece, wordpiece.tokenize),
                               ("word", word_vocab, lambda text: text.lower().split())):
        folder = export_huggingface(_model(len(vocab), True), vocab, str(tmp_path / name))
        reference("tokenize", folder, tmp_path / "texts.json", tmp_path / f"{name}.json")
        theirs = json.loads((tmp_path / f"{name}.json").read_text())
        for item, got in zip(texts, theirs):
            tokens, segments = get_tokens_and_segments(*map(split, item))
            assert got["input_ids"] == vocab[tokens], (name, item)
            assert got["token_type_ids"] == segments


def test_random_transformers_model_imports_with_the_same_outputs(tmp_path, reference):
    folder = tmp_path / "random"
    reference("random", folder)
    batch = _batch(97)
    theirs = _transformers_outputs(reference, str(folder), batch, tmp_path)
    net, tokenizer = import_huggingface(str(folder))  # model only: the checkpoint's own ids
    assert tokenizer is None
    ours = _outputs(net, batch)
    real = np.arange(12) < batch[2][:, None]
    assert np.abs(ours[0] - theirs[0])[real].max() < 1e-4
    assert np.abs(ours[1] - theirs[1]).max() < 1e-4 and np.abs(ours[2] - theirs[2]).max() < 1e-4

    # With Google's vocabulary layout ([PAD] 0, [UNK] 100, ...) the reserved ids move to 0-4 and the
    # model's rows move with them: the same text gives the same outputs.
    pieces = ["[PAD]"] + [f"[unused{i}]" for i in range(90)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "##s"]
    (folder / "vocab.txt").write_text("".join(p + "\n" for p in pieces), encoding="utf-8")
    net, tokenizer = import_huggingface(str(folder))
    _, order = load_tokenizer(str(folder / "vocab.txt"))
    new_id = np.argsort(order)
    tokens, segments, valid, positions = batch
    mapped = (new_id[tokens].astype(np.int32), segments, valid, positions)
    assert (mapped[0][tokens == 0] == 1).all()  # [PAD]: old id 0, new id 1
    moved = _outputs(net, mapped)
    assert np.abs(moved[0] - theirs[0])[real].max() < 1e-4
    assert np.abs(moved[2] - theirs[2]).max() < 1e-4
    np.testing.assert_allclose(moved[1][..., new_id], theirs[1], atol=1e-4)


def test_wordpiece_pretraining_export_and_continue_from_the_export(tmp_path, monkeypatch, capsys):
    """The README's commands: pretrain with WordPiece, export-hf, pretrain again from the export."""
    from bertpretrain import cli
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "cache"))
    quick = ["--dataset", "wikitext-2-sample", "--num-steps", "2", "--batch-size", "16", "--max-len", "32",
             "--no-progress"]
    run = tmp_path / "run"
    assert cli.main(["pretrain", *quick, "--output-dir", str(run), "--tokenizer", "wordpiece", "--vocab-size", "800",
                     "--whole-word-masking", "--architecture", "bert"]) == 0
    assert sorted(p.name for p in (run / "model").iterdir()) == ["config.json", "model.params", "tokenizer.json"]
    assert "encoding of the pair" in capsys.readouterr().out
    trained = (run / "tokenizer.json").read_text()
    assert trained == (run / "model" / "tokenizer.json").read_text()
    # training the tokenizer again could give other ids: --resume must keep the run's own
    assert cli.main(["pretrain", *quick[:2], "--num-steps", "3", *quick[4:], "--output-dir", str(run), "--resume",
                     "--tokenizer", "wordpiece", "--vocab-size", "800", "--architecture", "bert"]) == 0
    assert (run / "model" / "tokenizer.json").read_text() == trained
    assert json.loads((run / "history.json").read_text())["summary"]["steps"] == 3

    assert cli.main(["export-hf", str(run), str(tmp_path / "hf")]) == 0
    net, tokenizer = import_huggingface(str(tmp_path / "hf"))
    assert len(tokenizer) == net.config.vocab_size <= 800
    assert net.config.embedding_layer_norm and net.config.activation == "gelu"

    again = tmp_path / "again"
    assert cli.main(["pretrain", *quick, "--output-dir", str(again), "--init-from-hf", str(tmp_path / "hf")]) == 0
    history = json.loads((again / "history.json").read_text())
    assert history["summary"]["steps"] == 2
    assert json.loads((again / "model" / "config.json").read_text())["vocab_size"] == len(tokenizer)


def test_export_hf_refuses_a_d2l_run_with_the_option_to_use(tmp_path, monkeypatch, capsys):
    from bertpretrain import cli
    from bertpretrain.model import save_pretrained
    net = BERTModel(30)
    net.initialize()
    save_pretrained(net, str(tmp_path / "model"))
    Vocab([f"w{i}" for i in range(25)], min_freq=1).save(str(tmp_path / "model" / "vocab.json"))
    assert cli.main(["export-hf", str(tmp_path), str(tmp_path / "hf")]) == 1
    assert "--architecture bert" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
