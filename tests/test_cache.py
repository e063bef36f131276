"""The on-disk cache of encoded corpora: reused without re-reading, rebuilt when stale or corrupt."""
import hashlib
import json
import os

import numpy as np
import pytest

from bertpretrain.data import EncodedCorpus, Vocab, load_encoded_corpus
from bertpretrain.data import cache as cache_module


@pytest.fixture
def corpus_file(wiki_dir, tmp_path):
    path = tmp_path / "wiki.train.tokens"
    path.write_bytes((wiki_dir / "wiki.valid.tokens").read_bytes())
    return str(path)


def _entries(cache_dir):
    folder = os.path.join(cache_dir, "preprocessed")
    return sorted(n for n in os.listdir(folder) if not n.startswith(".")) if os.path.isdir(folder) else []


def _same(a, b):
    (ca, va), (cb, vb) = a, b
    assert va.idx_to_token == vb.idx_to_token
    for name in ("token_ids", "sentence_lengths", "paragraph_sizes"):
        np.testing.assert_array_equal(getattr(ca, name), getattr(cb, name))


def test_cached_encoding_equals_the_direct_one_and_is_reused(corpus_file, tmp_path, monkeypatch):
    direct = load_encoded_corpus(corpus_file, cache=False)
    built = load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path / "c")
    _same(direct, built)
    assert len(_entries(tmp_path / "c")) == 1

    def must_not_read(*args, **kwargs):
        raise AssertionError("the corpus was read again despite a valid cache")
    monkeypatch.setattr(EncodedCorpus, "read", must_not_read)
    _same(direct, load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path / "c"))


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete meta"])
def test_corrupt_or_incomplete_entries_are_rebuilt(corpus_file, tmp_path, caplog, damage):
    cached, vocab = load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path)
    # the cached arrays map the entry's files: copy them before damaging those files in place
    reference = EncodedCorpus(path=cached.path, **{name: np.array(getattr(cached, name)) for name in
                                                   ("token_ids", "sentence_lengths", "paragraph_sizes")}), vocab
    del cached
    entry = os.path.join(tmp_path, "preprocessed", _entries(tmp_path)[0])
    ids = os.path.join(entry, "token_ids.npy")
    if damage == "flip a byte":
        with open(ids, "r+b") as f:
            f.seek(-3, os.SEEK_END)
            byte = f.read(1)
            f.seek(-3, os.SEEK_END)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "truncate":
        os.truncate(ids, os.path.getsize(ids) // 2)
    else:
        os.remove(os.path.join(entry, "meta.json"))
    rebuilt = load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path)
    _same(reference, rebuilt)
    assert "rebuilding" in caplog.text
    _same(reference, load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path))  # and now valid again


def test_an_entry_from_before_manifests_is_still_used(corpus_file, tmp_path, monkeypatch, caplog):
    """An entry written by c41b35a or before (meta.json files as [size, sha1]) is checked and used, not rebuilt."""
    reference = load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path)
    entry = os.path.join(tmp_path, "preprocessed", _entries(tmp_path)[0])
    meta = json.loads(open(os.path.join(entry, "meta.json")).read())
    meta["files"] = {name: [os.path.getsize(os.path.join(entry, name)),
                            hashlib.sha1(open(os.path.join(entry, name), "rb").read()).hexdigest()]
                     for name in meta["files"]}
    open(os.path.join(entry, "meta.json"), "w").write(json.dumps(meta))
    monkeypatch.setattr(EncodedCorpus, "read", None)  # encoding again would fail
    _same(reference, load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path))
    assert "rebuilding" not in caplog.text


def test_key_changes_with_the_text_and_the_options(corpus_file, tmp_path):
    load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path)
    load_encoded_corpus(corpus_file, min_freq=3, cache=True, cache_dir=tmp_path)
    load_encoded_corpus(corpus_file, vocab=Vocab(["the"] * 5), cache=True, cache_dir=tmp_path)
    with open(corpus_file, "a") as f:
        f.write(" one more . paragraph here . \n")
    corpus, _ = load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path)
    assert len(_entries(tmp_path)) == 4
    assert corpus.paragraph_sizes[-1] == 2


def test_format_version_is_part_of_the_key(monkeypatch):
    before = cache_module.entry_key("0" * 40)
    monkeypatch.setattr(cache_module, "FORMAT_VERSION", cache_module.FORMAT_VERSION + 1)
    assert cache_module.entry_key("0" * 40) != before


def test_auto_caches_only_large_files(corpus_file, tmp_path, monkeypatch):
    load_encoded_corpus(corpus_file, cache="auto", cache_dir=tmp_path)
    assert _entries(tmp_path) == []
    monkeypatch.setattr(cache_module, "AUTO_CACHE_BYTES", 1)
    load_encoded_corpus(corpus_file, cache="auto", cache_dir=tmp_path)
    assert len(_entries(tmp_path)) == 1


def test_streaming_encoding_matches_a_plain_reading(corpus_file):
    corpus, vocab = EncodedCorpus.read(corpus_file)
    words, lengths, sizes = [], [], []
    for line in open(corpus_file, encoding="utf-8"):
        sentences = [s.split() for s in line.strip().lower().split(" . ") if s.strip()]
        if len(sentences) >= 2:
            sizes.append(len(sentences))
            lengths += [len(s) for s in sentences]
            words += [w for s in sentences for w in s]
    assert vocab.to_tokens(corpus.token_ids[:50]) == [w if w in vocab else "<unk>" for w in words[:50]]
    assert corpus.token_ids.tolist() == vocab[words]
    assert corpus.sentence_lengths.tolist() == lengths and corpus.paragraph_sizes.tolist() == sizes


def test_an_entry_another_process_completed_first_is_kept(corpus_file, tmp_path, monkeypatch):
    """Two processes encode the same file at once: the second to finish keeps the first one's entry."""
    real_read = EncodedCorpus.read
    inodes = []

    def read_while_another_process_finishes(*args, **kwargs):
        monkeypatch.setattr(EncodedCorpus, "read", real_read)
        load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path)  # the other process
        inodes.append(os.stat(os.path.join(tmp_path, "preprocessed", _entries(tmp_path)[0])).st_ino)
        return real_read(*args, **kwargs)
    monkeypatch.setattr(EncodedCorpus, "read", read_while_another_process_finishes)
    result = load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path)
    entry = os.path.join(tmp_path, "preprocessed", _entries(tmp_path)[0])
    assert os.stat(entry).st_ino == inodes[0], "a complete entry was replaced under its readers"
    assert sorted(os.listdir(os.path.join(tmp_path, "preprocessed"))) == [os.path.basename(entry)]
    _same(result, load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path))


def test_build_folders_left_by_killed_processes_are_removed(corpus_file, tmp_path):
    preprocessed = tmp_path / "preprocessed"
    stale, fresh = preprocessed / ".0123.tmp-old", preprocessed / ".4567.tmp-new"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "token_ids.npy").write_bytes(b"partial")
    two_hours_ago = os.path.getmtime(stale) - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    load_encoded_corpus(corpus_file, cache=True, cache_dir=tmp_path)
    assert not stale.exists(), "a build folder two hours old is a killed process's"
    assert fresh.exists(), "a recent build folder may belong to a process still encoding"
