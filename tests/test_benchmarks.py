"""The benchmarks' own configurations stay valid as the library's options change."""
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_quality():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_quality
        yield bench_quality
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_every_quality_recipe_makes_valid_options(bench_quality, tmp_path):
    """Each recipe of bench_quality.py (the README's "What to expect" tables) builds PretrainOptions:
    its overrides name options that exist, with values they accept."""
    for name in bench_quality.RECIPES:
        options = bench_quality.recipe_options(name, data_dir=str(tmp_path), output_dir=str(tmp_path / name))
        assert options.training.num_steps >= 1, name
