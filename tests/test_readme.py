"""Every command and the Python example of README.md, run from the README's own text with tiny sizes.

A documented command therefore cannot break unnoticed: the commands are read out of README.md (not
copied here), shortened to 2 steps of batch 8 and max_len 32 on the bundled sample (offline), and
run with a timeout. ``test_every_code_block_is_run_here`` keeps the list of blocks complete.
"""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bertpretrain import cli
from bertpretrain.data import download_extract

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SIZES = {"--num-steps": "2", "--batch-size": "8", "--max-len": "32"}
SAMPLE = ["--dataset", "wikitext-2-sample"]  # bundled with the package: no network
QUICKSTART = re.compile(r"python3 -m venv \.venv && \.venv/bin/pip install -q -e '\.\[(?P<extras>[a-z,]+)\]' && "
                        r"\.venv/bin/python (?P<args>.+)")
# Code blocks run by another test module: the two launch examples, which tests/test_launch.py reads
# from this README and runs on loopback, and the notebook's, whose notebook tests/test_notebook.py runs.
RUN_ELSEWHERE = {"jupyter lab examples/pretrain_bert.ipynb": "the notebook (tests/test_notebook.py runs it)"}


def section(title):
    """The README text under ``## title``, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def code_blocks(text, language=None):
    """The fenced code blocks of ``text`` in ``language`` (None: all, as (language, code) pairs)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)
    return blocks if language is None else [code for lang, code in blocks if lang == language]


def quickstart_commands():
    (block,) = code_blocks(section("Quickstart"), "bash")
    lines = [line for line in block.splitlines() if line and not line.startswith("#")]
    matches = [QUICKSTART.fullmatch(line) for line in lines]
    assert len(lines) == 2 and all(matches), f"the quickstart should hold two commands of the form " \
                                             f"'{QUICKSTART.pattern}', found {lines}"
    return matches


def shortened(args):
    """``args`` with the sizes of :data:`SIZES` (replaced where given, added where not)."""
    args, out = list(args), []
    while args:
        arg = args.pop(0)
        if arg in SIZES:
            args.pop(0)
        else:
            out.append(arg)
    return out + [item for pair in SIZES.items() for item in pair]


def python(args, cwd, timeout=300):
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_quickstart_installs_extras_that_exist():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for match in quickstart_commands():
        for extra in match["extras"].split(","):
            assert re.search(rf"^{extra} = \[", pyproject, re.M), f"extra [{extra}] is not in pyproject.toml"


def test_quickstart_pretraining_command_runs_shortened(tmp_path):
    args = shlex.split(quickstart_commands()[0]["args"])
    assert args[0] == "examples/pretrain_wikitext2.py"
    done = python([str(ROOT / args[0]), *shortened(args[1:] + SAMPLE), "--no-progress"], cwd=tmp_path)
    # What the README says the command writes, in the folder it names.
    folder = tmp_path / re.search(r"writes `(runs/[^`]+)/`", section("Quickstart")).group(1)
    for name in ("model", "checkpoints", "tokenizer.json", "loss_curves.png", "history.json"):
        assert (folder / name).exists(), f"{folder / name} missing"
    saved = sorted(p.name for p in (folder / "model").iterdir())
    assert saved == ["config.json", "model.params", "tokenizer.json"], saved  # the default recipe's WordPiece
    # the sentence in WordPiece's pieces (trained on the small sample, 'crane' may be 'cr ##ane')
    assert re.search(r"^encoding of 'a .*cr.*': shape \(1, \d+, 128\)", done.stdout, re.M), done.stdout
    assert "encoding of the pair" in done.stdout


def test_quickstart_test_command_runs_pytest_and_is_what_ci_runs():
    command = quickstart_commands()[1].group(0)
    args = shlex.split(quickstart_commands()[1]["args"])
    assert args == ["-m", "pytest"]
    done = python([*args, "--collect-only", "-q", "tests/test_repository.py"], cwd=ROOT)  # the suite's entry point
    assert "tests/test_repository.py::test_the_test_data_carries_its_licence_attribution" in done.stdout
    ci = subprocess.run([str(ROOT / ".ci" / "run"), "--print-command"], capture_output=True, text=True, timeout=60)
    assert ci.returncode == 0, ci.stderr
    assert ci.stdout.strip() == command, ".ci/run does not run the README's test command"


def documented_options():
    """The options the README's section on the command names as the main ones."""
    paragraph = section("The command").split("the main ones:\n")[1].split("\n\n")[0]
    documented = re.findall(r"`(--[a-z-]+)", paragraph)
    assert len(documented) >= 20, paragraph
    return documented


def test_help_commands_list_every_documented_option():
    assert "`bertpretrain pretrain --help` lists every option" in README
    for args in (["examples/pretrain_wikitext2.py", "--help"], ["-m", "bertpretrain.cli", "pretrain", "--help"]):
        text = python(args, cwd=ROOT, timeout=120).stdout
        assert [option for option in documented_options() if option not in text] == [], args


def test_every_documented_option_trains_and_resumes(tmp_path, caplog):
    documented = set(documented_options())
    out = str(tmp_path / "run")
    options = ["--lr", "1e-3", "--warmup-steps", "1", "--lr-decay", "linear", "--optimizer", "adamw",
               "--weight-decay", "0.01", "--accumulate-steps", "2", "--eval-interval", "1", "--precision", "fp32",
               "--model", "bert-tiny", "--architecture", "bert", "--num-layers", "1", "--hidden-size", "64"]
    base = shortened(options) + ["--seed", "3", "--kvstore", "device", "--no-progress"]
    first = SAMPLE + base + ["--devices", "cpu:0,cpu:1", "--output-dir", out, "--checkpoint-interval", "1"]
    paragraph = section("The command")
    assert "cpu:0,cpu:1" in re.search(r"`--devices ([^`]+)`", paragraph).group(1).split("|")
    assert cli.main(["pretrain", *first]) == 0
    resumed = first + ["--num-steps", "3", "--resume"]  # the last --num-steps wins
    with caplog.at_level("INFO", logger="bertpretrain"):
        assert cli.main(["pretrain", *resumed]) == 0
    assert "resumed from" in caplog.text and "at step 2" in caplog.text
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert history["step"] == [1, 2, 3]
    grimm = ROOT / "tests" / "data" / "grimms-fairy-tales"
    own_text = ["--train-file", str(grimm / "train.txt"), "--valid-file", str(grimm / "valid.txt"),
                "--text-format", "bert", "--tokenizer", "wordpiece", "--vocab-size", "800",
                "--output-dir", str(tmp_path / "text")]
    assert cli.main(["pretrain", *shortened([]), "--no-progress", *own_text]) == 0
    own_data = ["--data-dir", download_extract("wikitext-2-sample"), "--output-dir", str(tmp_path / "own"),
                "--preset", "d2l"]
    assert cli.main(["pretrain", *shortened([]), "--no-progress", *own_data]) == 0
    used = {a for a in first + resumed + own_text + own_data if a.startswith("--")}
    assert documented - used == set(), "a documented option is run by no command here"


def test_the_commands_of_the_command_section_run_shortened(tmp_path, monkeypatch):
    from test_docs import run_bash, _hf_python
    (block,) = code_blocks(section("The command"), "bash")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "cache"))
    run_bash(block, _hf_python)
    assert (tmp_path / "runs" / "grimm-hf" / "config.json").is_file()


def test_the_python_example_runs_shortened(tmp_path):
    (code,) = code_blocks(section("Using it from Python"), "python")
    sizes = "batch_size, max_len, num_steps = 512, 64, 50\n"
    assert code.count(sizes) == 1 and code.count('"wikitext-2"') == 2, "the example's sizes or dataset moved"
    tiny = code.replace(sizes, "batch_size, max_len, num_steps = 8, 32, 2\n").replace('"wikitext-2"',
                                                                                      '"wikitext-2-sample"')
    assert re.search(r"^import bertpretrain as bp", code) and code.index("import bertpretrain") < code.index(
        "import mxnet"), "the example must import bertpretrain before mxnet"
    done = python(["-c", tiny], cwd=tmp_path)
    documented_shape = re.search(r"print\(encoded\.shape\)\s+# (\(.*?\))", code).group(1)
    assert done.stdout.splitlines()[-1] == documented_shape
    assert (tmp_path / "runs" / "bert" / "vocab.json").is_file()


def test_every_code_block_is_run_here():
    """A new code block in the README needs a test above (or in RUN_ELSEWHERE, with the reason)."""
    tested = {"bash": [quickstart_commands()[0].group(0), "bertpretrain export-hf runs/grimm"],
              "python": ["batch_size, max_len, num_steps = 512, 64, 50"]}
    for language, block in code_blocks(README):
        known = tested.get(language, []) + list(RUN_ELSEWHERE)
        assert any(marker in block for marker in known), f"README block not run by any test:\n{block}"

