"""The example script and the ``bertpretrain pretrain`` command, end to end on the bundled sample."""
import argparse
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bertpretrain import cli
from bertpretrain.data import DATA_HUB, DatasetEntry

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--num-steps", "3", "--batch-size", "32", "--max-len", "32", "--no-progress"]


def _check_outputs(folder, steps, vocabulary="tokenizer.json"):
    """What a run writes: its model with its vocabulary (the default recipe's: the WordPiece tokenizer trained for
    the run, also kept in the run's folder for --resume), the loss curves, the history and the checkpoints."""
    model = folder / "model"
    assert sorted(p.name for p in model.iterdir()) == sorted(["config.json", "model.params", vocabulary])
    if vocabulary == "tokenizer.json":
        assert (model / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    assert (folder / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((folder / "history.json").read_text())
    assert saved["history"]["step"] == list(range(1, steps + 1))
    assert saved["history"]["checkpoint"] == saved["summary"]["checkpoint"] and saved["history"]["rank"] == 0
    assert saved["summary"]["eval"]["num_examples"] > 0
    assert (folder / "checkpoints" / "latest").read_text().strip() == f"step-{steps:08d}"


def test_example_script_runs_end_to_end_on_the_sample(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "pretrain_wikitext2.py"), "--dataset",
                           "wikitext-2-sample", "--output-dir", str(tmp_path), *QUICK],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _check_outputs(tmp_path, 3)
    assert re.search(r"^encoding of 'a .*cr.*': shape \(1, \d+, 128\)", done.stdout, re.M)  # words or pieces
    assert "encoding of the pair" in done.stdout


@pytest.fixture
def offline_wikitext2(monkeypatch):
    """Make the wikitext-2 mirrors a closed loopback port, as on a machine without network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = DATA_HUB["wikitext-2"]
    monkeypatch.setitem(DATA_HUB, "wikitext-2", DatasetEntry(urls=[f"http://127.0.0.1:{port}/wikitext-2-v1.zip"],
                                                             sha1=entry.sha1, files=entry.files))


def test_command_falls_back_to_the_sample_loudly_and_resumes(offline_wikitext2, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "cache"))
    assert cli.main(["pretrain", "--output-dir", str(tmp_path / "run"), *QUICK]) == 0
    err = caplog.text  # a warning of the library's logger, which the command shows on stderr
    assert "Could not download 'wikitext-2'" in err and "FALLING BACK" in err and "--no-fallback" in err
    _check_outputs(tmp_path / "run", 3)

    more = [a if a != "3" else "5" for a in QUICK]
    assert cli.main(["pretrain", "--output-dir", str(tmp_path / "run"), "--resume", *more]) == 0
    _check_outputs(tmp_path / "run", 5)


def test_resuming_a_finished_run_keeps_its_checkpoint_in_the_summary(tmp_path):
    args = ["pretrain", "--dataset", "wikitext-2-sample", "--output-dir", str(tmp_path), *QUICK]
    assert cli.main(args) == 0
    assert cli.main([*args, "--resume"]) == 0  # its last checkpoint is already the final step: nothing to train
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["summary"]["checkpoint"] == saved["history"]["checkpoint"]
    assert saved["summary"]["checkpoint"].endswith("step-00000003")


def test_no_fallback_fails_with_the_download_error(offline_wikitext2, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "cache"))
    assert cli.main(["pretrain", "--no-fallback", "--output-dir", str(tmp_path), *QUICK]) == 1
    err = capsys.readouterr().err
    assert "could not download dataset 'wikitext-2'" in err and "FALLING BACK" not in err
    assert not (tmp_path / "model").exists()


def test_usage_and_bad_devices(capsys):
    assert cli.main([]) == 2
    with pytest.raises(SystemExit) as exit_:
        cli.main(["pretrain", "--devices", "tpu:0", "--dataset", "wikitext-2-sample", *QUICK])
    assert exit_.value.code == 2
    assert "cannot read device 'tpu:0'" in capsys.readouterr().err


def test_console_script_help_lists_the_options():
    done = subprocess.run([sys.executable, "-m", "bertpretrain.cli", "pretrain", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    for option in ("--dataset", "--data-dir", "--num-steps", "--batch-size", "--max-len", "--lr", "--devices",
                   "--output-dir", "--resume", "--no-fallback", "--kvstore"):
        assert option in done.stdout


def test_data_dir_without_a_validation_split_trains_without_evaluation(tmp_path, wikitext2_splits, caplog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "wiki.train.tokens").write_bytes((wikitext2_splits / "wiki.test.tokens").read_bytes())
    assert cli.main(["pretrain", "--data-dir", str(data), "--output-dir", str(tmp_path / "run"), *QUICK]) == 0
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["history"]["step"] == [1, 2, 3] and "eval" not in saved["summary"]
    assert "no wiki.valid.tokens" in caplog.text


BAD_VALUES = [  # (flag and value, the option in Python, the one message of its one check)
    (["--num-steps", "0"], dict(num_steps=0), "num_steps (--num-steps) must be an integer >= 1, got 0"),
    (["--dataset", "wikitext-9"], dict(dataset="wikitext-9"),
     "unknown dataset 'wikitext-9' (--dataset): choose one of"),
    (["--batch-size", "0"], dict(batch_size=0), "batch_size (--batch-size) must be an integer >= 1, got 0"),
    (["--lr", "nan"], dict(lr=float("nan")), "lr (--lr) must be a finite number > 0, got nan"),
    (["--lr", "-0.1"], dict(lr=-0.1), "lr (--lr) must be a finite number > 0, got -0.1"),
    (["--max-len", "4"], dict(max_len=4), "max_len (--max-len) must be an integer >= 5, got 4"),
    (["--warmup-steps", "-1"], dict(warmup_steps=-1), "warmup_steps (--warmup-steps) must be an integer >= 0, got -1"),
    (["--checkpoint-interval", "0"], dict(checkpoint_interval=0),
     "checkpoint_interval (--checkpoint-interval) must be an integer >= 1 or None, got 0"),
    (["--vocab-size", "3"], dict(vocab_size=3), "vocab_size (--vocab-size) must be an integer >= 6, got 3"),
    (["--hidden-size", "100", "--num-heads", "3"], dict(num_hiddens=100, num_heads=3),
     "num_hiddens (100, --hidden-size) must be divisible by num_heads (3, --num-heads)"),
    (["--dropout", "1"], dict(dropout=1.0), "dropout (--dropout) must be a finite number >= 0 and < 1, got 1.0"),
    (["--max-len", "100000"], dict(max_len=100000, batch_size=32),  # checked against the model's positions
     "--max-len 100000 is more than the 512 positions (the longest sequence the model takes): a training step of "
     "32 sequences of 100000 tokens would need about 106 GB of memory. Use --max-len 512 or less"),
    (["--max-len", "513"], dict(max_len=513), "--max-len 513 is more than the 512 positions"),
]


@pytest.mark.parametrize("args, python, message", BAD_VALUES)
def test_bad_arguments_are_usage_errors(args, python, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["pretrain", "--dataset", "wikitext-2-sample", "--output-dir", str(tmp_path), *QUICK, *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: bertpretrain pretrain") and message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir()), "nothing is written for a bad argument"


@pytest.mark.parametrize("args, python, message", BAD_VALUES)
def test_python_gets_the_commands_message_from_the_same_check(args, python, message):
    from bertpretrain.options import OptionError, split_by_owner
    from bertpretrain.recipe import SECTIONS, PretrainOptions
    with pytest.raises(OptionError) as raised:
        PretrainOptions.create(**python)
    assert message in str(raised.value)
    owners = [(section, values) for (_, section), values in zip(SECTIONS, split_by_owner(
        [section for _, section in SECTIONS], python)) if values]
    section, values = owners[0]  # the dataclass that owns the option refuses it alone, with the same message,
    if "positions" not in message:  # unless the check needs another section too (max_len: the model's positions)
        with pytest.raises(OptionError, match=re.escape(message)):
            section(**values)


def test_every_option_defaults_to_its_dataclass_field():
    from bertpretrain.options import cli_fields, flag_of
    from bertpretrain.recipe import SECTIONS
    parser = cli.add_pretrain_arguments(argparse.ArgumentParser())
    declared = 0
    for _, section in SECTIONS:
        for field in cli_fields(section):
            assert parser.get_default(field.name) == field.default, field.name
            assert any(flag_of(field) in action.option_strings for action in parser._actions), field.name
            declared += 1
    generated = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "preset")]
    assert len({a.dest for a in generated}) == declared  # nothing declared beside the fields


def test_a_gpu_that_does_not_exist_is_a_usage_error(capsys):
    import mxnet as mx
    missing = mx.context.num_gpus()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["pretrain", "--devices", f"gpu:{missing}", "--dataset", "wikitext-2-sample", *QUICK])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    sees = f"{missing} GPU(s)" if missing else "no GPU"
    assert f"'gpu:{missing}' was asked for but MXNet sees {sees}" in err and "Traceback" not in err


def test_a_read_only_output_folder_fails_before_training(tmpfs, capsys, caplog):
    folder = tmpfs("ro", "size=1m,ro")
    assert cli.main(["pretrain", "--dataset", "wikitext-2-sample", "--output-dir", str(folder / "run"), *QUICK]) == 1
    err = capsys.readouterr().err
    assert f"error: the output folder {folder / 'run'} cannot be written (Read-only file system)" in err
    assert "training on" not in caplog.text


def test_a_full_disk_is_an_error_naming_the_file_not_a_traceback(tmp_path, tmpfs, capsys):
    # d2l's word vocabulary: the default recipe's WordPiece tokenizer.json would be the first write to fail
    args = ["pretrain", "--dataset", "wikitext-2-sample", *QUICK, "--tokenizer", "word"]
    assert cli.main([*args, "--output-dir", str(tmp_path / "measure")]) == 0
    pages = lambda path: -(-path.stat().st_size // 4096) * 4096  # noqa: E731  (tmpfs counts whole pages)
    checkpoint = sum(pages(f) for f in (tmp_path / "measure" / "checkpoints").rglob("*") if f.is_file())
    params = (tmp_path / "measure" / "model" / "model.params").stat().st_size

    small = tmpfs("small", f"size={checkpoint + 4096 + params // 2}")  # the checkpoint fits, model/ does not
    assert cli.main([*args, "--output-dir", str(small)]) == 1
    err = capsys.readouterr().err
    assert f"error: the disk is full: [Errno 28] No space left on device (the disk is full): " \
           f"'{small / 'model' / 'model.params'}'" in err
    assert f"checkpoints in {small / 'checkpoints'} are kept" in err and "--resume" in err
    assert sorted(p.name for p in small.iterdir()) == ["checkpoints"], "model/ is written whole or not at all"
    subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)  # space freed: the way out works
    assert cli.main([*args, "--output-dir", str(small), "--resume"]) == 0
    _check_outputs(small, 3, vocabulary="vocab.json")

    tiny = tmpfs("tiny", "size=64k")  # not even the checkpoint fits
    assert cli.main([*args, "--output-dir", str(tiny)]) == 1
    err = capsys.readouterr().err
    assert f"error: cannot write {tiny / 'checkpoints' / 'step-00000003'}" in err and "the disk is full" in err


def test_preset_d2l_gives_the_defaults_and_other_options_override_it(monkeypatch):
    from dataclasses import fields
    from bertpretrain.recipe import PRESETS, SECTIONS, PretrainOptions
    seen = []
    monkeypatch.setattr(cli, "run_pretraining", lambda options, report: seen.append(options) or {"interrupted": False})
    assert cli.pretrain_main(["--preset", "d2l", "--seed", "3"]) == 0
    assert cli.pretrain_main(["--preset", "d2l", "--num-steps", "7", "--lr", "0.5"]) == 0
    assert cli.pretrain_main([]) == 0
    d2l, changed, default = (options.flat() for options in seen)
    defaults = {f.name: f.default for _, section in SECTIONS for f in fields(section) if f.name != "vocab_size"}
    assert PRESETS["d2l"] == {"seed": 0}  # d2l's run is the dataclasses' defaults, seeded
    assert {name: d2l[name] for name in defaults if name not in ("seed", "checkpoint_dir")} == \
        {name: value for name, value in defaults.items() if name not in ("seed", "checkpoint_dir")}
    assert (d2l["num_steps"], d2l["batch_size"], d2l["lr"], d2l["architecture"], d2l["seed"]) == \
        (50, 512, 0.01, "d2l", 3)
    assert changed == dict(d2l, seed=0, num_steps=7, lr=0.5)
    assert default == PretrainOptions.create().flat()  # the command's default: the recipe preset
    assert {name: default[name] for name in PRESETS["recipe"]} == PRESETS["recipe"]


def test_a_hugging_face_folder_brings_its_tokenizer_over_the_presets(tmp_path):
    """--init-from-hf reads the folder's tokenizer: the recipe preset's WordPiece gives way; a --tokenizer given
    with it is refused."""
    from bertpretrain.options import OptionError
    from bertpretrain.recipe import PRESETS, PretrainOptions
    assert PRESETS["recipe"]["tokenizer"] == "wordpiece"
    options = PretrainOptions.create(init_from_hf=str(tmp_path), output_dir=str(tmp_path / "out"))
    assert (options.data.tokenizer, options.run.init_from_hf) == ("word", str(tmp_path))
    assert cli.pretrain_options(["--init-from-hf", str(tmp_path)]).data.tokenizer == "word"  # the command too
    with pytest.raises(OptionError, match="drop --tokenizer"):
        PretrainOptions.create(init_from_hf=str(tmp_path), tokenizer="wordpiece")


def test_recipe_options_build_the_training_config(tmp_path):
    from bertpretrain.recipe import PretrainOptions
    config = PretrainOptions.create("d2l", output_dir=str(tmp_path), checkpoint_interval=5, seed=3).training
    assert (config.num_steps, config.lr, config.lr_decay, config.initializer) == (50, 0.01, "none", "xavier")
    assert (config.checkpoint_dir, config.checkpoint_interval, config.seed) == (str(tmp_path / "checkpoints"), 5, 3)
    assert config.kvstore == "device"


def test_bert_base_trains_and_saves_on_a_cpu(tmp_path, monkeypatch):
    """--model bert-base --max-len 128: two steps on the CPU, saved and loadable (a small WordPiece vocabulary
    and batch keep it quick; the 12 x 768 layers are BERT-base's)."""
    from bertpretrain import load_pretrained
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "cache"))
    text = ROOT / "tests" / "data" / "grimms-fairy-tales" / "valid.txt"
    assert cli.main(["pretrain", "--model", "bert-base", "--max-len", "128", "--num-steps", "2", "--batch-size", "4",
                     "--train-file", str(text), "--tokenizer", "wordpiece", "--vocab-size", "2000", "--no-progress",
                     "--output-dir", str(tmp_path / "run")]) == 0
    net, _ = load_pretrained(str(tmp_path / "run" / "model"))
    assert (net.config.num_layers, net.config.num_hiddens, net.config.max_len) == (12, 768, 128)
    assert json.loads((tmp_path / "run" / "history.json").read_text())["summary"]["steps"] == 2
