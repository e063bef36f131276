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
    """Each recipe of bench_quality.py (docs/quality.md's tables) builds PretrainOptions, as a protocol run
    makes them (a seed, a --set override): its overrides name options that exist, with values they accept."""
    for name in bench_quality.RECIPES:
        options = bench_quality.recipe_options(name, **bench_quality.parse_settings(["warmup_steps=1"]), seed=2,
                                               data_dir=str(tmp_path), output_dir=str(tmp_path / name))
        assert options.training.num_steps >= 1 and options.training.seed == 2, name
        assert options.training.warmup_steps == 1, name
    c41b35a = bench_quality.recipe_options("default-c41b35a", data_dir=str(tmp_path))
    assert c41b35a.model.architecture == "bert-preln" and c41b35a.model.final_layer_norm is False
    assert bench_quality.recipe_options("preln-wp4000", data_dir=str(tmp_path)).data.tokenizer == "wordpiece"


def test_the_measured_default_recipe_is_the_commands_default(bench_quality, tmp_path):
    """docs/quality.md's tables of the default were measured with bench_quality's DEFAULT_RECIPE (pinned options):
    the command's preset must be those options, and d2l's preset d2l's run."""
    from bertpretrain.recipe import PretrainOptions
    fixed = dict(data_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    assert bench_quality.recipe_options(bench_quality.DEFAULT_RECIPE, **fixed).flat() == \
        PretrainOptions.create("recipe", **fixed).flat() == bench_quality.recipe_options("default", **fixed).flat()
    assert bench_quality.recipe_options("d2l", **fixed).flat() == PretrainOptions.create("d2l", **fixed).flat()


def _result(recipe="r", seed=0, direction="valid:test", below=0.6, nsp=0.65, collapse=0.3, clean=0.4, cpu=300.0,
            unk_first=0.0, distinct=8, hf=True):
    """A synthetic result file of one run, as bench_quality.py writes it."""
    fill = {"examples": [], "unk_first": unk_first, "top_k_hits": 0.3, "distinct_first": distinct}
    return {"recipe": recipe, "seed": seed, "direction": direction, "mlm_loss": 5.0, "unigram_ce": 5.0 + below,
            "nsp_acc": nsp, "collapse": collapse, "clean_collapse": clean, "cpu_seconds": cpu, "mlm_acc": 0.25,
            "known_acc": 0.1, "crane_cos": 0.8, "perplexity": 150.0, "steps": 1100, "fill_mask": dict(fill),
            "hf_fill_mask": dict(fill, examples=[{}]) if hf else {"skipped": "not exported"}}


def _protocol(changes=None):
    """d2l's two baseline runs (60 and 50 CPU-s) and recipe r's six runs; ``changes``: {(seed, direction): {...}}."""
    changes = changes or {}
    results = [_result("d2l", 0, "valid:test", cpu=60.0), _result("d2l", 0, "test:valid", cpu=50.0)]
    for direction in ("valid:test", "test:valid"):
        for seed in (0, 1, 2):
            results.append(_result(seed=seed, direction=direction, **changes.get((seed, direction), {})))
    return results


def test_heldout_unigram_leaves_the_unknown_token_out_for_recipes_that_never_mask_it(bench_quality):
    """A recipe with unk_targets=False is compared with the unigram of the other tokens (renormalised without
    the unknown token's share), on the same targets; its MLM loss does not change."""
    from types import SimpleNamespace

    import numpy as np

    import bertpretrain  # noqa: F401  (before mxnet)
    import mxnet as mx
    from bertpretrain.data import UNK_ID
    vocab = list(range(8))
    train = np.array([UNK_ID] * 50 + [5] * 30 + [6] * 20)       # half of the training tokens are <unk>
    logits = np.log(np.full((1, 2, 8), 1 / 8))                   # a model that answers uniformly

    def net(tokens, segments, valid_lens, positions):
        return mx.nd.ones((1, 4, 3)), mx.nd.array(logits), mx.nd.array([[1.0, 0.0]])
    batch = SimpleNamespace(tokens=mx.nd.array([[2, 5, 6, 3]]), segments=None, valid_lens=None,
                            pred_positions=None, mlm_labels=mx.nd.array([[5, 6]], dtype="int64"),
                            mlm_weights=mx.nd.ones((1, 2)), nsp_labels=mx.nd.array([0]))
    every = bench_quality.heldout_metrics(net, train, [batch], vocab)
    known = bench_quality.heldout_metrics(net, train, [batch], vocab, unk_targets=False)
    assert every["mlm_loss"] == known["mlm_loss"] == pytest.approx(np.log(8))
    # add-one smoothing over 8 ids: 5 and 6 have 31/108 and 21/108 with <unk> counted, 31/58 and 21/58 without
    assert every["unigram_ce"] == pytest.approx(-(np.log(31 / 108) + np.log(21 / 108)) / 2)
    assert known["unigram_ce"] == pytest.approx(-(np.log(31 / 58) + np.log(21 / 58)) / 2)


def test_protocol_verdict_needs_five_of_six_runs_and_reports_the_worst(bench_quality):
    verdict = bench_quality.summarize(_protocol())["r"]
    assert verdict["passes"] and verdict["met"] == 6 and verdict["complete"]
    assert verdict["worst"]["cpu_ratio"] == pytest.approx(6.0)  # 300 CPU-s over d2l's 50 in that direction
    assert [r["cpu_ratio"] for r in verdict["runs"]] == pytest.approx([5.0] * 3 + [6.0] * 3)

    one_bad = bench_quality.summarize(_protocol({(1, "test:valid"): dict(nsp=0.58, clean=0.55)}))["r"]
    assert one_bad["passes"] and one_bad["met"] == 5  # one run may miss
    assert one_bad["worst"]["nsp_acc"] == 0.58 and one_bad["worst"]["clean_collapse"] == 0.55
    assert one_bad["checks"][4] == dict(below_unigram=True, nsp_acc=False, collapse=True, clean_collapse=False,
                                        cpu_ratio=True, fill_mask=True)

    two_bad = bench_quality.summarize(_protocol({(0, "valid:test"): dict(below=0.49),
                                                   (2, "test:valid"): dict(collapse=0.51)}))["r"]
    assert not two_bad["passes"] and two_bad["met"] == 4
    assert two_bad["worst"]["below_unigram"] == pytest.approx(0.49) and two_bad["worst"]["collapse"] == 0.51

    slow = bench_quality.summarize(_protocol({(2, "test:valid"): dict(cpu=301.0)}))["r"]
    assert slow["met"] == 5 and slow["cpu_ok"] is False and slow["passes"]  # the CPU limit is a target like the rest
    assert slow["worst"]["cpu_ratio"] == pytest.approx(301 / 50)
    slower = bench_quality.summarize(_protocol({(2, "test:valid"): dict(cpu=301.0),
                                                (0, "valid:test"): dict(cpu=361.0)}))["r"]
    assert slower["met"] == 4 and not slower["passes"]

    assert not bench_quality.summarize(_protocol()[:-1])["r"]["passes"]  # five runs are not a protocol
    two_baselines = _protocol() + [_result("d2l", 1, "test:valid", cpu=70.0)]  # the mean of d2l's runs: 60
    assert bench_quality.summarize(two_baselines)["r"]["worst"]["cpu_ratio"] == pytest.approx(5.0)
    unbased = bench_quality.summarize([r for r in _protocol() if r["recipe"] != "d2l"])["r"]
    assert unbased["cpu_ok"] is None and unbased["met"] == 0 and not unbased["passes"]  # no baseline: no verdict


def test_protocol_fill_mask_requirement(bench_quality):
    unknown_first = bench_quality.summarize(_protocol({(s, "valid:test"): dict(unk_first=0.1) for s in (0, 1)}))
    assert unknown_first["r"]["fill_mask_ok"] == 4 and not unknown_first["r"]["passes"]
    one_answer = bench_quality.summarize(_protocol({(0, "test:valid"): dict(distinct=1)}))["r"]
    assert one_answer["fill_mask_ok"] == 5 and one_answer["passes"]
    assert one_answer["worst"]["hf_distinct_first"] == 1
    assert bench_quality.fill_mask_ok(_result(hf=False, distinct=6)) == (True, "ours")  # not exported: our answers
    assert bench_quality.fill_mask_ok(_result(distinct=4)) == (False, "transformers")


def test_protocol_table_and_plan(bench_quality):
    runs = bench_quality.planned_runs(["r"], [0, 1, 2], ["valid:test", "test:valid"])
    assert runs[:6] == [("d2l", s, d) for d in ("valid:test", "test:valid") for s in (0, 1, 2)] and len(runs) == 12
    assert bench_quality.planned_runs(["d2l"], [0, 1], ["valid:test"]) == [("d2l", 0, "valid:test"),
                                                                          ("d2l", 1, "valid:test")]
    assert bench_quality.planned_runs(["r"], [0], ["valid:test"], baseline=False) == [("r", 0, "valid:test")]
    assert bench_quality.run_key("preln", 1, "test:valid") == "preln.seed1.test-valid"
    text = bench_quality.table(bench_quality.summarize(_protocol({(1, "test:valid"): dict(nsp=0.58)})))
    rows = [line for line in text.splitlines() if line.startswith("| seed")]
    assert len(rows) == 8 and "not nsp_acc" in rows[6] and sum(row.endswith("| all |") for row in rows) == 2 + 5
    assert "| **worst** |" in text and "**passes the protocol**" in text
    assert bench_quality.parse_settings(["num_steps=5", "tokenizer=wordpiece"]) == dict(num_steps=5,
                                                                                       tokenizer="wordpiece")


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
