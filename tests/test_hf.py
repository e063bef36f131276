"""Hugging Face export and import: bit-exact round trips here, and the real transformers in a separate process.

The transformers checks run ``tests/hf_reference.py`` under a Python that has ``transformers`` and CPU
``torch`` (the two frameworks never share a process with MXNet): ``$BERTPRETRAIN_HF_PYTHON``, else
``.venv-hf-check/bin/python`` in the checkout (which ``.ci/run`` creates), else this Python if it has them.
"""
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("safetensors", reason="the 'safetensors' package is not installed: pip install 'bertpretrain[hf]'")

import mxnet as mx  # noqa: E402

from bertpretrain.data import (PAD_ID, DataError, Vocab, download_extract,  # noqa: E402
                               get_tokens_and_segments, load_tokenizer, train_wordpiece)
from bertpretrain.hf import export_huggingface, import_huggingface  # noqa: E402
from bertpretrain.model import BERTModel  # noqa: E402
from bertpretrain.model import ARCHITECTURES  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "hf_reference.py"
SENTENCES = ["The game was released in Japan .", "unbelievably , the <unk> crane flew over the river"]
PAIRS = [["the crane is flying", "he just left"], ["In 2010 , the team won", "zzyzx qwerty"]]
# each --architecture that exports, and the transformers model_type it exports as
LAYOUTS = {"bert": "bert", "bert-preln": "roberta-prelayernorm", "megatron-bert": "megatron-bert"}
# (architecture, tied decoder, activation, tokenizer): every layout tied with WordPiece and untied with the
# word-level vocabulary (RoBERTa-PreLayerNorm's MLM head is GELU only)
CASES = [(arch, tied, "relu" if not tied and arch != "bert-preln" else "gelu", "wordpiece" if tied else "word")
         for arch in LAYOUTS for tied in (True, False)]


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


def _model(vocab_size, tied, activation="gelu", seed=0, architecture="bert"):
    mx.random.seed(seed)
    options = dict(ARCHITECTURES[architecture], tie_mlm_weights=tied, activation=activation)
    if architecture == "bert":
        options["layer_norm_eps"] = 1e-12
    net = BERTModel(vocab_size, num_hiddens=32, ffn_num_hiddens=48, num_heads=4, num_layers=2, max_len=40,
                    dropout=0.1, **options)
    net.initialize(mx.init.Normal(0.1))
    for name, param in net.collect_params().items():  # non-trivial LayerNorm and biases: mix-ups show
        if name.endswith(("bias", "beta", "gamma")):
            param.set_data(param.data() + mx.np.random.normal(0, 0.1, param.shape))
    return net


VALID = np.array([12, 7, 5], dtype=np.int32)  # the valid lengths of _batch's examples


def _batch(vocab_size, seed=0):
    """Three padded examples: tokens, segments (B, 12), valid_lens (B,), pred_positions (B, 3)."""
    rng = np.random.default_rng(seed)
    valid = VALID.copy()
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
    """{structural name (encoder.layers.0.ffn_in.weight, ...): value}"""
    return {name: p.data().asnumpy() for name, p in net._collect_params_with_prefix().items()}


@pytest.mark.parametrize("architecture, tied, activation, tokenizer", CASES)
def test_export_then_import_is_bit_exact(tmp_path, wordpiece, word_vocab, caplog, architecture, tied, activation,
                                         tokenizer):
    vocab = wordpiece if tokenizer == "wordpiece" else word_vocab
    net = _model(len(vocab), tied, activation, architecture=architecture)
    folder = export_huggingface(net, vocab, str(tmp_path / "hf"))
    names = sorted(os.listdir(folder))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(names)
    assert ("vocab.txt" in names) == (tokenizer == "wordpiece")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == LAYOUTS[architecture] and config["tie_word_embeddings"] == tied
    assert config["hidden_act"] == activation and config["layer_norm_eps"] == net.config.layer_norm_eps

    with caplog.at_level(logging.WARNING, logger="bertpretrain.hf"):
        again, tokenizer = import_huggingface(folder)
    assert again.config == net.config
    nsp_exported = architecture != "bert-preln"  # RobertaPreLayerNormForMaskedLM has no NSP head
    assert ("no next-sentence head" in caplog.text) != nsp_exported
    before, after = _parameters(net), _parameters(again)
    assert sorted(before) == sorted(after)
    for name, value in before.items():
        if nsp_exported or not name.startswith("nsp."):
            assert value.tobytes() == after[name].tobytes(), name
    batch = _batch(len(vocab))
    ours, theirs = _outputs(net, batch), _outputs(again, batch)
    for a, b in zip(ours, theirs if nsp_exported else theirs[:2]):
        assert a.tobytes() == b.tobytes()
    assert tokenizer.idx_to_token == vocab.idx_to_token and type(tokenizer) is type(vocab)


def test_a_model_huggingface_cannot_express_is_refused(tmp_path, word_vocab):
    net = BERTModel(len(word_vocab))  # d2l's default: no LayerNorm after the embeddings, post-LN
    net.initialize()
    with pytest.raises(ValueError, match="embedding_layer_norm=True"):
        export_huggingface(net, word_vocab, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists(), "something was written for a refused model"
    with pytest.raises(ValueError, match="vocab_size is 1234"):
        export_huggingface(_model(1234, True), word_vocab, str(tmp_path / "out"))
    old = BERTModel(len(word_vocab), activation="gelu", embedding_layer_norm=True, pre_layer_norm=True,
                    final_layer_norm=False)  # a pre-LN model saved before the final LayerNorm existed
    old.initialize()
    with pytest.raises(ValueError, match="no final LayerNorm.*train it again"):
        export_huggingface(old, word_vocab, str(tmp_path / "out"))
    relu = BERTModel(len(word_vocab), activation="relu", embedding_layer_norm=True, pre_layer_norm=True)
    relu.initialize()
    with pytest.raises(ValueError, match="RobertaPreLayerNormForMaskedLM applies gelu"):
        export_huggingface(relu, word_vocab, str(tmp_path / "out"))
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
    with pytest.raises(DataError, match="pytorch_model.bin.*AutoModelForPreTraining.*save_pretrained"):
        import_huggingface(str(folder))
    with pytest.raises(DataError, match="config.json not found"):
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


def _transformers_outputs(reference, folders, batch, tmp_path):
    """{folder: (encoded, mlm_logits, nsp_logits or None)} of transformers' AutoModelForPreTraining, one process."""
    tokens, segments, valid, positions = batch
    np.savez(tmp_path / "in.npz", input_ids=tokens, token_type_ids=segments, pred_positions=positions,
             attention_mask=(np.arange(tokens.shape[1]) < valid[:, None]).astype(np.int32))
    jobs = [{"folder": str(folder), "inputs": str(tmp_path / "in.npz"), "out": str(tmp_path / f"out{i}.npz")}
            for i, folder in enumerate(folders)]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    log = reference("outputs", tmp_path / "jobs.json")
    assert "MISSING" not in log and "UNEXPECTED" not in log and "newly initialized" not in log, log
    results = {}
    for folder, job in zip(folders, jobs):
        out = np.load(job["out"])
        results[folder] = (out["encoded"], out["mlm_logits"], out["nsp_logits"] if "nsp_logits" in out else None)
    return results


def _max_differences(ours, theirs, valid=VALID):
    """Largest |ours - theirs| of the encoder (real positions only: padding's own states are not compared), the
    MLM logits and the NSP logits (transformers' class order is ours reversed; None when not exported)."""
    real = np.arange(ours[0].shape[1]) < valid[:, None]
    nsp = None if theirs[2] is None else float(np.abs(ours[2] - theirs[2][:, ::-1]).max())
    return float(np.abs(ours[0] - theirs[0])[real].max()), float(np.abs(ours[1] - theirs[1]).max()), nsp


@pytest.fixture(scope="module")
def exported(tmp_path_factory, reference, wordpiece, word_vocab):
    """{case: (our outputs, transformers' outputs)} of every CASES export, on one padded batch."""
    tmp_path = tmp_path_factory.mktemp("exported")
    ours, folders = {}, {}
    for case in CASES:
        architecture, tied, activation, tokenizer = case
        vocab = wordpiece if tokenizer == "wordpiece" else word_vocab
        net = _model(len(vocab), tied, activation, architecture=architecture)
        folders[case] = export_huggingface(net, vocab, str(tmp_path / "-".join(map(str, case))))
        ours[case] = _outputs(net, _batch(len(vocab)))
    theirs = {}
    for vocab in (wordpiece, word_vocab):  # one batch (and process) per vocabulary size
        cases = [c for c in CASES if (wordpiece if c[3] == "wordpiece" else word_vocab) is vocab]
        results = _transformers_outputs(reference, [folders[c] for c in cases], _batch(len(vocab)),
                                        tmp_path_factory.mktemp("io"))
        theirs.update({c: results[folders[c]] for c in cases})
    return {case: (ours[case], theirs[case]) for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(map(str, case)))
def test_exported_model_matches_transformers(exported, case):
    ours, theirs = exported[case]
    encoder, mlm, nsp = _max_differences(ours, theirs)
    print(f"{case}: max |difference| encoder {encoder:.1e}, MLM {mlm:.1e}, NSP {nsp}")
    assert encoder < 1e-4 and mlm < 1e-4
    assert (nsp is None) == (case[0] == "bert-preln")  # RobertaPreLayerNormForMaskedLM has no NSP head
    assert nsp is None or nsp < 1e-4


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


@pytest.fixture(scope="module")
def random_models(tmp_path_factory, reference):
    """{model_type: (folder, transformers' outputs on _batch(97))} of a random model of each class, saved by
    transformers."""
    tmp_path = tmp_path_factory.mktemp("random")
    folders = {model_type: tmp_path / model_type for model_type in LAYOUTS.values()}
    reference("random", *(str(a) for item in folders.items() for a in item[::-1]))
    theirs = _transformers_outputs(reference, list(folders.values()), _batch(97), tmp_path_factory.mktemp("io"))
    return {model_type: (folder, theirs[folder]) for model_type, folder in folders.items()}


@pytest.mark.parametrize("model_type", list(LAYOUTS.values()))
def test_random_transformers_model_imports_with_the_same_outputs(random_models, model_type, caplog):
    folder, theirs = random_models[model_type]
    with caplog.at_level(logging.WARNING, logger="bertpretrain.hf"):
        net, tokenizer = import_huggingface(str(folder))  # model only: the checkpoint's own ids
    assert tokenizer is None
    assert ("no next-sentence head" in caplog.text) == (model_type == "roberta-prelayernorm")
    encoder, mlm, nsp = _max_differences(_outputs(net, _batch(97)), theirs)
    print(f"{model_type}: max |difference| encoder {encoder:.1e}, MLM {mlm:.1e}, NSP {nsp}")
    assert encoder < 1e-4 and mlm < 1e-4 and (nsp is None or nsp < 1e-4)


def test_google_vocabulary_layout_moves_reserved_ids_and_rows_together(random_models, tmp_path):
    # With Google's vocabulary layout ([PAD] 0, [UNK] 100, ...) the reserved ids move to 0-4 and the
    # model's rows move with them: the same text gives the same outputs.
    source, theirs = random_models["bert"]
    folder = tmp_path / "google"
    shutil.copytree(source, folder)
    pieces = ["[PAD]"] + [f"[unused{i}]" for i in range(90)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "##s"]
    (folder / "vocab.txt").write_text("".join(p + "\n" for p in pieces), encoding="utf-8")
    net, tokenizer = import_huggingface(str(folder))
    assert (tokenizer.source_order == load_tokenizer(str(folder / "vocab.txt")).source_order).all()
    new_id = np.argsort(tokenizer.source_order)
    tokens, segments, valid, positions = _batch(97)
    mapped = (new_id[tokens].astype(np.int32), segments, valid, positions)
    assert (mapped[0][tokens == 0] == 1).all()  # [PAD]: old id 0, new id 1
    moved = _outputs(net, mapped)
    real = np.arange(12) < valid[:, None]
    assert np.abs(moved[0] - theirs[0])[real].max() < 1e-4
    assert np.abs(moved[2] - theirs[2][:, ::-1]).max() < 1e-4
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


@pytest.mark.parametrize("architecture, hf_class", [("bert-preln", "RobertaPreLayerNormForMaskedLM"),
                                                    ("megatron-bert", "MegatronBertForPreTraining")])
def test_export_hf_writes_each_pre_ln_architecture_as_its_transformers_class(tmp_path, word_vocab, capsys, caplog,
                                                                            architecture, hf_class):
    from bertpretrain import cli
    from bertpretrain.model import save_pretrained
    net = _model(len(word_vocab), True, architecture=architecture)
    save_pretrained(net, str(tmp_path / "run" / "model"), vocab=word_vocab)
    with caplog.at_level(logging.WARNING, logger="bertpretrain.hf"):
        assert cli.main(["export-hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert f"AutoModelForPreTraining.from_pretrained('{tmp_path / 'hf'}') (a {hf_class})" in capsys.readouterr().out
    assert ("leaves out this model's NSP" in caplog.text) == (architecture == "bert-preln")
    again, vocab = import_huggingface(str(tmp_path / "hf"))
    assert again.config == net.config and vocab.idx_to_token == word_vocab.idx_to_token


@pytest.fixture
def bert_folder(tmp_path, word_vocab):
    """A BERT export of a small model with the word-level vocabulary."""
    return pathlib.Path(export_huggingface(_model(len(word_vocab), True), word_vocab, str(tmp_path / "hf")))


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del config[key]
    (folder / "config.json").write_text(json.dumps(config))


def test_import_reads_only_inside_its_folder(bert_folder, tmp_path):
    weights = bert_folder / "model.safetensors"
    names = list(json.loads(weights.read_bytes()[8:8 + int.from_bytes(weights.read_bytes()[:8], "little")]))
    os.replace(weights, tmp_path / "outside.safetensors")
    index = bert_folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {name: "../outside.safetensors" for name in names
                                                if name != "__metadata__"}}))
    with pytest.raises(DataError, match=r"model.safetensors.index.json names the shard '../outside.safetensors', "
                                        r"which lies outside"):
        import_huggingface(str(bert_folder))
    index.write_text(json.dumps({"weight_map": {"x": str(tmp_path / "outside.safetensors")}}))
    with pytest.raises(DataError, match="lies outside"):
        import_huggingface(str(bert_folder))
    # shards inside the folder, even as symbolic links (the Hugging Face cache links snapshots to blobs), are read
    os.symlink(tmp_path / "outside.safetensors", bert_folder / "model-00001-of-00001.safetensors")
    index.write_text(json.dumps({"weight_map": {name: "model-00001-of-00001.safetensors" for name in names}}))
    assert import_huggingface(str(bert_folder))[0].config.vocab_size > 0


def test_import_checks_sizes_against_the_files_before_allocating(bert_folder):
    import resource
    vocab_size = json.loads((bert_folder / "config.json").read_text())["vocab_size"]
    for name in ("tokenizer.json", "vocab.txt"):
        if (bert_folder / name).exists():
            os.remove(bert_folder / name)
    for claimed in (10 ** 9, 2 * 10 ** 7):  # 10**9: MXNet cannot even build it; 2*10**7: 2.6 GB
        _edit_config(bert_folder, vocab_size=claimed)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
        with pytest.raises(DataError, match=rf"model.safetensors: bert.embeddings.word_embeddings.weight has shape "
                                            rf"\({vocab_size}, 32\) but .*config.json implies \({claimed}, 32\)"):
            import_huggingface(str(bert_folder))
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000, "allocated before checking"
    _edit_config(bert_folder, vocab_size=vocab_size, num_hidden_layers=3)
    with pytest.raises(DataError, match=r"lacks 16 parameter\(s\) of BertForPreTraining, e.g. \['bert.encoder.layer.2"):
        import_huggingface(str(bert_folder))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "config.json").write_text('{"model_type": "bert", "vocab_size": 10,'),
     r"config.json is not valid JSON \(Expecting property name"),
    (lambda f: _edit_config(f, hidden_size=None), r"config.json has no 'hidden_size'"),
    (lambda f: _edit_config(f, num_attention_heads="four"), r"config.json describes no model .*num_heads"),
    (lambda f: (f / "model.safetensors").write_bytes(os.urandom(4096)), r"model.safetensors is not a readable "
                                                                         r"safetensors file"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
     r"model.safetensors is not a readable safetensors file .*damaged or truncated"),
    (lambda f: ((f / "model.safetensors.index.json").write_text("[1, 2"), os.remove(f / "model.safetensors")),
     r"model.safetensors.index.json is not a safetensors index"),
])
def test_a_damaged_folder_is_refused_naming_the_file(bert_folder, damage, message):
    damage(bert_folder)
    with pytest.raises(DataError, match=message) as error:
        import_huggingface(str(bert_folder))
    assert str(bert_folder) in str(error.value)


def _quick_pretrain(tmp_path, *options):
    from bertpretrain import cli
    return cli.main(["pretrain", "--dataset", "wikitext-2-sample", "--num-steps", "1", "--batch-size", "8",
                     "--max-len", "32", "--no-progress", "--output-dir", str(tmp_path / "run"), *options])


def test_init_from_a_pytorch_bin_folder_gives_the_conversion_command(bert_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "cache"))
    os.replace(bert_folder / "model.safetensors", bert_folder / "pytorch_model.bin")
    assert _quick_pretrain(tmp_path, "--init-from-hf", str(bert_folder)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: {bert_folder} holds pytorch_model.bin only" in err
    assert f"M.from_pretrained('{bert_folder}').save_pretrained('{bert_folder}')" in err


def test_export_hf_to_a_file_or_a_read_only_disk_names_out(tmp_path, tmpfs, word_vocab, capsys):
    from bertpretrain import cli
    from bertpretrain.model import save_pretrained
    save_pretrained(_model(len(word_vocab), True), str(tmp_path / "model"), vocab=word_vocab)
    (tmp_path / "file").write_text("not a folder")
    read_only = tmpfs("ro", "size=1m,ro")
    for out in (tmp_path / "file", read_only / "hf"):
        assert cli.main(["export-hf", str(tmp_path / "model"), str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot ") and str(out) in err, err
        assert ".tmp-" not in err and "Errno" not in err, err
    assert (tmp_path / "file").read_text() == "not a folder"


GRIMM = ROOT / "tests" / "data" / "grimms-fairy-tales"


def test_any_bert_on_your_own_text_exports_to_transformers_with_the_same_outputs(tmp_path, monkeypatch, reference):
    """Issue 21's run: BERT-mini on text that is not WikiText (BERT's format), WordPiece, AdamW, accumulation;
    export-hf; transformers gives our encoder and MLM outputs."""
    from bertpretrain import cli, load_pretrained
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert cli.main(["pretrain", "--model", "bert-mini", "--num-layers", "2", "--train-file", str(GRIMM / "train.txt"),
                     "--valid-file", str(GRIMM / "valid.txt"), "--tokenizer", "wordpiece", "--vocab-size", "3000",
                     "--optimizer", "adamw", "--accumulate-steps", "2", "--num-steps", "3", "--batch-size", "8",
                     "--max-len", "48", "--eval-interval", "2", "--no-progress", "--output-dir", str(run)]) == 0
    saved = json.loads((run / "history.json").read_text())
    assert [e["step"] for e in saved["history"]["eval"]] == [2, 3]
    options = saved["summary"]["options"]
    assert (options["optimizer"], options["accumulate_steps"], options["model"]) == ("adamw", 2, "bert-mini")
    net, tokenizer = load_pretrained(str(run / "model"))
    assert (net.config.num_hiddens, net.config.num_layers, net.config.num_heads) == (256, 2, 4)
    assert "Once upon a time" not in tokenizer.tokenize("Once upon a time")  # lower-cased pieces
    assert cli.main(["export-hf", str(run), str(tmp_path / "hf")]) == 0
    batch = _batch(len(tokenizer))
    theirs = _transformers_outputs(reference, [tmp_path / "hf"], batch, tmp_path)[tmp_path / "hf"]
    encoder, mlm, nsp = _max_differences(_outputs(net, batch), theirs)
    assert encoder < 1e-4 and mlm < 1e-4 and nsp is None  # the recipe's layout: RoBERTa-PreLN, no NSP head



def test_export_hf_of_a_folder_without_a_model_is_one_error_line(tmp_path, capsys):
    from bertpretrain import cli
    assert cli.main(["export-hf", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.json not found" in err and "Traceback" not in err
