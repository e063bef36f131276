"""The benchmarks stay runnable as the library changes: their configurations are valid, each one's
``--help`` runs, and their shared helpers (benchmarks/common.py) work."""
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
        assert options.num_steps >= 1, name


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
