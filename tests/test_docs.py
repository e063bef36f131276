"""Every code block of docs/*.md runs, through the real entry points, with tiny sizes.

The blocks are read out of the Markdown files (not copied here). Python blocks run in a fresh
interpreter with their sizes shortened (``num_steps=2``, ``batch_size=8``, ``max_len=32``) on the bundled
WikiText-2 sample; ``bertpretrain`` commands of bash blocks run through ``bertpretrain.cli.main`` the
same way; a ``python -c`` that imports transformers runs in the Python tests/test_hf.py finds. The blocks
of one file run in order in one folder, so a later block can use what an earlier one wrote. Blocks that
another test module runs are listed in :data:`RUN_ELSEWHERE`. The option tables of docs/command.md are
checked against the ones the option fields make.
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bertpretrain import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
SIZES = {"num_steps": "2", "batch_size": "8", "max_len": "32"}
SAMPLE = ["--dataset", "wikitext-2-sample"]
DATA_OPTIONS = ("--dataset", "--data-dir", "--train-file", "--init-from-hf")
# A marker of a block that another test module runs (it reads the block from the docs), and which.
RUN_ELSEWHERE = {"bertpretrain launch -n 2 -s 1": "tests/test_launch.py",
                 "horovodrun -np 4": "tests/test_horovod.py"}


def code_blocks(text):
    """The fenced code blocks of ``text``: (language, code) pairs, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)


def in_repository(text):
    """Paths into the repository's test data made absolute (the blocks run in another folder)."""
    return text.replace("tests/data/", f"{ROOT}/tests/data/")


def shortened_python(code):
    code = re.sub(r"\b(num_steps|batch_size|max_len)=\d+", lambda m: f"{m[1]}={SIZES[m[1]]}", code)
    return in_repository(code.replace('"wikitext-2"', '"wikitext-2-sample"'))


def shortened_args(args):
    """``args`` of ``bertpretrain pretrain`` with tiny sizes, offline on the sample unless data is given."""
    out, args = [], list(args)
    flags = {f"--{name.replace('_', '-')}": value for name, value in SIZES.items()}
    while args:
        arg = args.pop(0)
        if arg in flags:
            args.pop(0)
        else:
            out.append(in_repository(arg))
    out += [item for pair in flags.items() for item in pair] + ["--no-progress"]
    return out if any(a in DATA_OPTIONS for a in out) else out + SAMPLE


def commands(code):
    """The commands of a bash block, in order: continuation lines joined, a ``python -c "..."`` program kept
    whole, comments and blank lines left out."""
    lines, items = re.sub(r"\\\n\s*", " ", code).splitlines(), []
    while lines:
        line = lines.pop(0)
        if line.startswith('python -c "') and not line.endswith('"'):
            while not line.endswith('"'):
                line += "\n" + lines.pop(0)
        if line.strip() and not line.startswith("#"):
            items.append(line)
    return items


def run_bash(code, hf_python):
    for line in commands(code):
        if line.startswith("bertpretrain "):
            words = shlex.split(line)
            args = shortened_args(words[2:]) if words[1] == "pretrain" else [in_repository(w) for w in words[2:]]
            assert cli.main([words[1], *args]) == 0, line
        elif line.startswith("python -m bertpretrain."):
            done = subprocess.run([sys.executable, *shlex.split(line)[1:]], capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, f"{line}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        elif line.startswith("python benchmarks/"):  # a benchmark takes minutes: its options exist, and it starts
            words = shlex.split(line)
            done = subprocess.run([sys.executable, str(ROOT / words[1]), "--help"], capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            unknown = [w for w in words[2:] if w.startswith("--") and w not in done.stdout]
            assert unknown == [], f"{line}: {unknown} not among {words[1]}'s options"
        elif line.startswith('python -c "'):
            program = line[len('python -c "'):-1]
            python = hf_python() if "transformers" in program else sys.executable
            done = subprocess.run([python, "-c", program], capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
        else:
            pytest.fail(f"no runner for this documented command (add one to tests/test_docs.py): {line}")


def _hf_python():
    from test_hf import _reference_python
    python = _reference_python()
    if python is None:
        pytest.skip("transformers and CPU torch are not installed where tests/test_hf.py looks")
    return python


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_code_block_of_the_docs_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "cache"))
    for language, code in code_blocks(path.read_text(encoding="utf-8")):
        elsewhere = [test for marker, test in RUN_ELSEWHERE.items() if marker in code]
        if elsewhere:
            assert all((ROOT / test).is_file() for test in elsewhere)
        elif language == "python":
            done = subprocess.run([sys.executable, "-c", shortened_python(code)], cwd=tmp_path, capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"{path.name}:\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        elif language == "bash":
            run_bash(code, _hf_python)
        else:
            pytest.fail(f"{path.name}: a code block in {language or 'no language'}: mark it python or bash")


def test_every_module_command_named_in_the_docs_runs():
    """Commands written inline (``python -m bertpretrain.launch --help``) run too."""
    named = set()
    for path in [ROOT / "README.md", *DOCS]:
        named.update(re.findall(r"`(python -m bertpretrain\.[^`]+)`", path.read_text(encoding="utf-8")))
    assert named, "the docs name no module command"
    for command in sorted(named):
        done = subprocess.run([sys.executable, *shlex.split(command)[1:]], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{command}:\n{done.stderr[-3000:]}"


def test_the_option_tables_are_the_ones_the_fields_make():
    text = (ROOT / "docs" / "command.md").read_text(encoding="utf-8")
    tables = re.search(r"<!-- options:.*?-->\n(.*?)\n<!-- /options -->", text, re.S).group(1)
    assert tables == cli.options_markdown(), "docs/command.md's option tables are stale: replace them with " \
        "the output of python -c 'import bertpretrain.cli as c; print(c.options_markdown())'"


def test_the_readme_links_every_doc():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [doc.name for doc in DOCS if f"docs/{doc.name}" not in readme] == []


def test_every_link_to_a_file_of_the_repository_resolves():
    """The README's and docs' relative links ([text](path)) name files that exist."""
    broken = []
    for page in [ROOT / "README.md", *DOCS]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
