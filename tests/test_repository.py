"""A fresh clone is self-contained: the test data lives in the repository, not beside it."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wikitext2_fixtures_read_only_files_inside_the_repository(wikitext2_splits, wiki_dir):
    assert ROOT in wikitext2_splits.resolve().parents, \
        f"{wikitext2_splits} is outside the repository {ROOT}: a fresh clone would not have it"
    assert sorted(p.name for p in wikitext2_splits.glob("*.tokens")) == ["wiki.test.tokens", "wiki.valid.tokens"]
    words = sum(len(line.split()) for line in (wiki_dir / "wiki.train.tokens").read_text().splitlines())
    assert words == 213886 + 241211  # the whole validation + test splits, as the data tests expect


def test_the_test_data_carries_its_licence_attribution():
    text = (ROOT / "tests" / "data" / "wikitext-2" / "README.md").read_text()
    assert "CC BY-SA 3.0" in text and "Merity" in text


def _calls_and_imports(path):
    import ast
    tree = ast.parse(path.read_text(), str(path))
    return list(ast.walk(tree))


def test_only_the_commands_print_to_stdout():
    """The library logs; only the commands (cli.py, launch.py, __main__.py) write to stdout."""
    import ast
    commands = {"cli.py", "launch.py", "__main__.py"}
    printing = []
    for path in sorted((ROOT / "src" / "bertpretrain").rglob("*.py")):
        if path.name in commands:
            continue
        for node in _calls_and_imports(path):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                to = next((k.value for k in node.keywords if k.arg == "file"), None)
                if not (isinstance(to, ast.Attribute) and to.attr == "stderr"):
                    printing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not printing, f"the library prints to stdout at {printing}: log instead (logging.getLogger(__name__))"


def test_the_training_runtime_does_not_import_the_launcher():
    import ast
    path = ROOT / "src" / "bertpretrain" / "distributed.py"
    imported = [node.module for node in _calls_and_imports(path) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in _calls_and_imports(path) if isinstance(node, ast.Import) for alias in node.names]
    assert not any(name and name.split(".")[-1] == "launch" for name in imported), imported
