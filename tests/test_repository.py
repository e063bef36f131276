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
