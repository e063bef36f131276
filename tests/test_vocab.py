import collections

import pytest

from bertpretrain.data import RESERVED_TOKENS, DataError, Vocab


def test_reserved_tokens_come_first_with_fixed_ids():
    vocab = Vocab(["b"] * 5, min_freq=1)
    assert vocab.idx_to_token[:5] == ["<unk>", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]
    assert [vocab[t] for t in RESERVED_TOKENS] == [0, 1, 2, 3, 4]


def test_words_ordered_by_descending_frequency_then_alphabetically():
    tokens = ["zeta"] * 3 + ["alpha"] * 3 + ["beta"] * 7 + ["rare"] * 2 + ["gamma"] * 3
    vocab = Vocab(tokens, min_freq=3)
    assert vocab.idx_to_token[5:] == ["beta", "alpha", "gamma", "zeta"]
    assert "rare" not in vocab and vocab["rare"] == 0


def test_counts_mapping_gives_same_vocab_as_tokens():
    tokens = "a b b c c c d d d d".split()
    assert Vocab(collections.Counter(tokens), min_freq=2).idx_to_token == Vocab(tokens, min_freq=2).idx_to_token


def test_literal_reserved_token_in_text_keeps_reserved_id():
    vocab = Vocab(["<unk>"] * 10 + ["word"] * 10, min_freq=1)
    assert vocab.idx_to_token.count("<unk>") == 1
    assert vocab["<unk>"] == 0 and vocab["word"] == 5


def test_lookup_of_lists_arrays_and_back():
    vocab = Vocab(["x"] * 6 + ["y"] * 5, min_freq=5)
    assert vocab[["x", "nope", "y"]] == [5, 0, 6]
    assert vocab.lookup_array(["y", "x", "?"]).tolist() == [6, 5, 0]
    assert vocab.lookup_array(["y"]).dtype.name == "int32"
    assert vocab.to_tokens([6, 5, 1]) == ["y", "x", "[PAD]"]
    assert vocab.to_tokens(2) == "[CLS]"
    assert len(vocab) == 7 and vocab.num_words == 2


def test_json_round_trip(tmp_path):
    vocab = Vocab("the cat sat on the mat the end".split(), min_freq=1)
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded.idx_to_token == vocab.idx_to_token
    assert loaded["the"] == vocab["the"] and loaded["unseen"] == 0 and loaded.min_freq == 1
    assert not [p for p in tmp_path.iterdir() if p.name != "vocab.json"], "temporary files left behind"


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "other", "idx_to_token": []}', "not a bertpretrain vocabulary"),
])
def test_load_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        Vocab.load(path)


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="missing.json"):
        Vocab.load(tmp_path / "missing.json")


def test_min_freq_must_be_positive():
    with pytest.raises(ValueError, match="min_freq"):
        Vocab(["a"], min_freq=0)


def test_vocab_records_the_unk_rate_of_its_own_corpus(tmp_path):
    # 6 known words, 2 rare ones and 2 literal <unk>: 4 of 10 tokens are <unk>
    vocab = Vocab(["a"] * 6 + ["rare"] * 2 + ["<unk>"] * 2, min_freq=3)
    assert vocab.unk_rate == pytest.approx(0.4)
    vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json").unk_rate == pytest.approx(0.4)


def test_a_vocabulary_from_another_corpus_is_warned_about(tmp_path, caplog):
    from bertpretrain.data import build_dataset, download_extract
    sample = download_extract("wikitext-2-sample")
    _, own = build_dataset(f"{sample}/wiki.train.tokens", 32, seed=0)
    other = tmp_path / "other.tokens"
    other.write_text("".join(f" w{i} w{i + 1} w{i + 2} . w{i + 3} w{i + 4} . \n" for i in range(0, 200)) * 5)
    _, foreign = build_dataset(str(other), 32, seed=0)
    caplog.clear()
    build_dataset(f"{sample}/wiki.valid.tokens", 32, seed=0, vocab=own)  # the validation split: no warning
    assert "<unk>" not in caplog.text
    build_dataset(f"{sample}/wiki.train.tokens", 32, seed=0, vocab=foreign)
    assert f"{sample}/wiki.train.tokens:" in caplog.text
    assert "% of its tokens become <unk> with the vocabulary given, against 0% in the corpus it was built" \
           in caplog.text and "another corpus" in caplog.text
