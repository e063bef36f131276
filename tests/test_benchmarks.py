"""The benchmarks stay runnable as the library changes: their configurations are valid, each one's
``--help`` runs, and their shared helpers (benchmarks/common.py) work."""
import argparse
import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("bench_*.py"))


@pytest.fixture(scope="module")
def benchmarks_path():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def bench_quality(benchmarks_path):
    import bench_quality
    return bench_quality


@pytest.fixture(scope="module")
def common(benchmarks_path):
    import common
    return common


def test_every_quality_recipe_makes_valid_options(bench_quality, tmp_path):
    """Each recipe of bench_quality.py (the README's "What to expect" tables) builds PretrainOptions:
    its overrides name options that exist, with values they accept."""
    for name in bench_quality.RECIPES:
        options = bench_quality.recipe_options(name, data_dir=str(tmp_path), output_dir=str(tmp_path / name))
        assert options.training.num_steps >= 1, name


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_explains_itself(script):
    """``--help`` runs (the script imports, its options parse) and says what the benchmark measures."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ") and len(result.stdout.splitlines()) > 3


def test_cpu_description_names_the_model(common):
    description = common.cpu_description()
    assert "logical CPUs" in description and not description.startswith(",")
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = set(next((line.partition(":")[2].split() for line in f if line.startswith("flags")), []))
    if flags and subprocess.run(["sh", "-c", "command -v lscpu"], capture_output=True).returncode == 0:
        for flag in ("avx512f", "avx512_bf16"):  # named exactly when the CPU has them (lscpu's Flags line)
            assert (flag in description.split()) == (flag in flags), (flag, description)


def _stand_in_library(folder, model_source):
    """A ``src`` folder whose ``bertpretrain.model`` is ``model_source``, for a child of common.run_child."""
    package = folder / "src" / "bertpretrain"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model" / "__init__.py").write_text(model_source)
    return folder / "src"


def test_precision_options_ask_a_version_before_bfloat16_for_fp32_only(common, tmp_path):
    """A library whose BERTModel takes no precision (a --baseline before bfloat16) is asked for nothing in fp32
    and refused bf16 with the reason; this one is asked for fp32 by name (train_bert's default is 'auto')."""
    script = tmp_path / "child.py"
    script.write_text(f"import sys, json\nsys.path.insert(0, {str(BENCHMARKS)!r})\nimport common\n"
                      "common.import_library()\n"
                      "print(json.dumps([common.precision_options(p) for p in ('fp32', 'bf16')]))\n")
    old = _stand_in_library(tmp_path / "old", "class BERTModel:\n    def __init__(self, vocab_size, backend=None):\n"
                                              "        pass\n")
    fp32, bf16 = common.child_json([script], threads=1, source=common.Source("old", old, str(tmp_path / "home")))
    assert fp32 == [{}, None]
    assert bf16[0] is None and "no precision option" in bf16[1]
    fp32, bf16 = common.child_json([script], threads=1)
    assert fp32 == [{"precision": "fp32"}, None]
    assert bf16 == [{"precision": "bf16"}, None] or (bf16[0] is None and bf16[1])


@pytest.fixture(scope="module")
def bench_model(benchmarks_path):
    import bench_model
    return bench_model


def test_a_model_config_fills_the_unset_shapes_and_reaches_children_whole(bench_model):
    """--config base gives BERT-base's shapes, an explicit size overrides it, and shape_options hands a child
    (bench_model's own or torch_reference's) exactly the resolved values."""
    parser = argparse.ArgumentParser()
    bench_model.add_shape_arguments(parser)
    args = bench_model.resolve_shapes(parser.parse_args(["--config", "base", "--num-layers", "2"]))
    assert (args.num_hiddens, args.num_heads, args.num_layers, args.batch_size, args.vocab_size, args.lr) == (
        768, 12, 2, 32, 30522, 1e-4)
    child = parser.parse_args([str(value) for value in bench_model.shape_options(args)])
    assert vars(child) == vars(args)
    d2l = bench_model.resolve_shapes(parser.parse_args([]))
    assert (d2l.config, d2l.batch_size, d2l.max_len, d2l.vocab_size) == ("d2l", 512, 64, 6899)


def _torch_python():
    """A Python with torch (never this one, which has MXNet), or None."""
    for python in filter(None, [os.environ.get("BERTPRETRAIN_HF_PYTHON"),
                                str(BENCHMARKS.parent / ".venv-hf-check" / "bin" / "python")]):
        if os.path.isfile(python) and subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0:
            return python
    return None


def test_the_pytorch_reference_trains_on_bench_models_batches():
    """torch_reference.py (bench_model --torch) explains itself and, at a tiny size, runs both modes and prints
    bench_model's child result: per mode the timed steps and finite losses."""
    python = _torch_python()
    if python is None:
        pytest.skip("no Python with torch: set BERTPRETRAIN_HF_PYTHON (see tests/requirements-hf-check.txt)")
    script = str(BENCHMARKS / "torch_reference.py")
    result = subprocess.run([python, script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: "), result.stderr
    tiny = ["--config", "mini", "--batch-size", "4", "--max-len", "16", "--num-hiddens", "16", "--ffn-num-hiddens",
            "32", "--num-heads", "2", "--num-layers", "1", "--vocab-size", "50", "--warmup", "1", "--steps", "2"]
    result = subprocess.run([python, script, *tiny, "--clock", "cpu"], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["library"].startswith("PyTorch ") and set(output["paths"]) == {"fp32 eager", "bf16 autocast"}
    for mode in output["paths"].values():
        assert len(mode["step_seconds"]) == 2 and all(s > 0 for s in mode["step_seconds"])
        assert all(0 < loss < 20 for loss in mode["first_losses"] + mode["last_losses"])


def test_a_child_imports_the_library_of_the_source_asked_for(common, tmp_path, capsys):
    """run_child puts the source's src first (here a stand-in library), and import_library checks it."""
    fake = tmp_path / "src" / "bertpretrain"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("STAND_IN = True\n")
    script = tmp_path / "child.py"
    script.write_text(f"import sys, json\nsys.path.insert(0, {str(BENCHMARKS)!r})\nimport common\n"
                      "print(json.dumps(common.import_library().__file__))\n")
    source = common.Source("stand-in", tmp_path / "src", str(tmp_path / "home"))
    assert common.child_json([script], threads=1, source=source) == str(fake / "__init__.py")
    assert common.child_json([script]).startswith(str(BENCHMARKS.parent / "src"))


def test_a_baseline_is_checked_out_apart_and_removed_afterwards(common):
    repository = BENCHMARKS.parent
    if subprocess.run(["git", "-C", str(repository), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout: --baseline needs one")
    with common.sources("HEAD") as versions:
        current, baseline = versions
        assert current.src == repository / "src"
        assert (baseline.src / "bertpretrain" / "__init__.py").is_file() and baseline.home
        tree = baseline.src.parent
    assert not tree.exists()
    worktrees = subprocess.run(["git", "-C", str(repository), "worktree", "list"], capture_output=True,
                               text=True).stdout
    assert str(tree) not in worktrees
    with pytest.raises(SystemExit, match="not a commit"):
        with common.sources("no-such-commit-anywhere"):
            pass


@pytest.fixture(scope="module")
def probes(benchmarks_path):
    import quality_probes
    return quality_probes


@pytest.fixture(scope="module")
def heldout(probes, wikitext2_splits):
    return probes.heldout_sentences(str(wikitext2_splits / "wiki.test.tokens"))


@pytest.fixture(scope="module")
def word_vocab(wikitext2_splits):
    from bertpretrain.data import Vocab
    return Vocab((wikitext2_splits / "wiki.valid.tokens").read_text(encoding="utf-8").lower().split(), min_freq=5)


def _net(vocab, seed=0, **options):
    import mxnet as mx
    from bertpretrain.model import BERTModel
    mx.random.seed(seed)
    net = BERTModel(len(vocab), max_len=64, dropout=0.0, activation="gelu", embedding_layer_norm=True,
                    tie_mlm_weights=True, pre_layer_norm=True, **options)
    net.initialize(mx.init.Normal(0.5))
    return net


def test_fill_mask_questions_mask_one_known_content_word_of_a_clean_sentence(probes, heldout, word_vocab):
    from bertpretrain.data import MASK, UNK_ID
    net = _net(word_vocab)
    questions = probes.masked_examples(net, word_vocab, heldout)
    assert len(questions) == 10
    for question in questions:
        tokens, position, answer = question["tokens"], question["position"], question["answer"]
        assert tokens.count(MASK) == 1 and tokens[position] == MASK
        assert probes.MIN_WORDS <= len(tokens) <= probes.MAX_WORDS
        assert answer.isalpha() and answer not in probes.FUNCTION_WORDS and word_vocab[answer] != UNK_ID
        assert " ".join(tokens[:position] + [answer] + tokens[position + 1:]) in heldout
    assert probes.masked_examples(net, word_vocab, heldout) == questions  # the seed fixes them
    assert probes.masked_examples(net, word_vocab, heldout, seed=1) != questions


def test_fill_mask_report_counts_unknown_first_guesses_and_hits(probes, heldout, word_vocab):
    from mxnet import np as mx_np
    from bertpretrain.data import UNK_ID
    net = _net(word_vocab)
    report = probes.fill_mask_report(net, word_vocab, heldout)
    assert len(report["examples"]) == 10 and all(len(e["top"]) == 5 for e in report["examples"])
    for example in report["examples"]:
        probabilities = [p for _, p in example["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0 + 1e-6

    bias = net.mlm.decoder_bias
    favoured = bias.data().asnumpy() * 0
    favoured[UNK_ID] = 100.0  # a model that answers the unknown token whatever the sentence
    bias.set_data(mx_np.array(favoured))
    report = probes.fill_mask_report(net, word_vocab, heldout)
    assert report["unk_first"] == 1.0 and report["distinct_first"] == 1
    assert all(e["top"][0] == ["<unk>", 1.0] for e in report["examples"])

    answers = [e["answer"] for e in report["examples"]]
    favoured[UNK_ID] = 0.0
    favoured[word_vocab[answers]] = 100.0  # every answer first or among the first 10: each is in someone's top 5
    bias.set_data(mx_np.array(favoured))
    report = probes.fill_mask_report(net, word_vocab, heldout, top_k=len(set(answers)))
    assert report["unk_first"] == 0.0 and report["top_k_hits"] == 1.0


def test_clean_sentence_collapse_is_the_mean_cosine_between_positions(probes, heldout, word_vocab):
    import numpy as np
    from mxnet import np as mx_np
    from bertpretrain.encoding import get_bert_encoding
    net = _net(word_vocab)
    clean = [s for s in heldout if 8 <= len(s.split()) <= 30][:20]
    expected = []
    for sentence in clean:  # pair by pair
        states = get_bert_encoding(net, sentence.split(), vocab=word_vocab).asnumpy()[0, 1:-1]
        cosines = [a @ b / np.linalg.norm(a) / np.linalg.norm(b)
                   for i, a in enumerate(states) for j, b in enumerate(states) if i != j]
        expected.append(np.mean(cosines))
    value = probes.clean_sentence_collapse(net, word_vocab, heldout)
    assert abs(value - np.mean(expected)) < 1e-6 and value < 0.99
    assert probes.clean_sentence_collapse(net, word_vocab, ["too short ."] + heldout) == value

    norm = net.encoder.final_norm  # every position the same vector: beta
    norm.gamma.set_data(mx_np.zeros(norm.gamma.shape))
    norm.beta.set_data(mx_np.random.normal(size=norm.beta.shape))
    assert abs(probes.clean_sentence_collapse(net, word_vocab, heldout) - 1.0) < 1e-6


def test_wordpiece_questions_mask_whole_words_only(probes, heldout, wikitext2_splits):
    pytest.importorskip("tokenizers", reason="the 'tokenizers' package is not installed: pip install 'bertpretrain[hf]'")
    from bertpretrain.data import MASK, train_wordpiece
    tokenizer = train_wordpiece([str(wikitext2_splits / "wiki.valid.tokens")], vocab_size=3000)
    net = _net(tokenizer)
    report = probes.fill_mask_report(net, tokenizer, heldout)
    assert len(report["examples"]) == 10
    for question in probes.masked_examples(net, tokenizer, heldout):
        after = question["tokens"][question["position"] + 1:]
        assert not (after and after[0].startswith("##")) and not question["answer"].startswith("##")
        assert question["tokens"][question["position"]] == MASK
    assert 0.0 <= probes.clean_sentence_collapse(net, tokenizer, heldout) < 1.0
