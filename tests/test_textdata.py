"""Your own corpus: files, folders, globs and .gz; BERT's format and WikiText's, detected or refused;
documents as the unit of next-sentence pairs; cased and uncased WordPiece; the cache; bounded memory."""
import gzip
import importlib.util
import json
import mmap
import os
import shutil
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import bertpretrain as bp
from bertpretrain.data import (DataError, EncodedCorpus, build_dataset, detect_format, load_data_text,
                               load_data_wiki, load_encoded_corpus, resolve_files, train_wordpiece)
from bertpretrain.data import cache as cache_module
from bertpretrain.data import corpus as corpus_module

GRIMM = Path(__file__).resolve().parent / "data" / "grimms-fairy-tales"
TRAIN, VALID = GRIMM / "train.txt", GRIMM / "valid.txt"


def _documents(path):
    """The documents of a BERT-format file, as lists of sentences (a plain reading, for reference)."""
    return [block.splitlines() for block in Path(path).read_text(encoding="utf-8").strip("\n").split("\n\n")]


def _write_documents(path, documents):
    Path(path).write_text("\n\n".join("\n".join(d) for d in documents) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(str(TRAIN), vocab_size=2000)


def _same_corpus(a, b):
    for name in ("token_ids", "sentence_lengths", "paragraph_sizes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


# --- the shipped corpus -------------------------------------------------------------------------------

def test_the_test_corpus_is_bert_format_with_its_attribution_and_no_distributor_text():
    readme = (GRIMM / "README.md").read_text(encoding="utf-8")
    assert "public domain" in readme and "Edgar Taylor" in readme and "#2591" in readme
    for path in (TRAIN, VALID):
        text = path.read_text(encoding="utf-8")
        assert "gutenberg" not in text.lower(), f"{path} must hold the tales only (no distributor text)"
        assert text.endswith("\n") and "\n\n\n" not in text
        documents = _documents(path)
        assert all(len(d) >= 2 for d in documents)
        assert all(s == s.strip() and s for d in documents for s in d)
    assert len(_documents(TRAIN)) == 60 and len(_documents(VALID)) == 5
    assert detect_format([str(TRAIN), str(VALID)]) == "bert"


def test_the_conversion_script_splits_sentences_sensibly():
    spec = importlib.util.spec_from_file_location("make_corpus", GRIMM / "make_corpus.py")
    make_corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_corpus)
    paragraph = ("'Ah!' said the young man, 'that would be a great\nthing.' Then he went. Mr. Fox came\n"
                 "with his _tail_; 'Why?' asked he. 'Oh, stay!' cried the wolf.")
    assert make_corpus.split_sentences(paragraph) == [
        "'Ah!' said the young man, 'that would be a great thing.'", "Then he went.",
        "Mr. Fox came with his tail; 'Why?' asked he.", "'Oh, stay!' cried the wolf."]


# --- which files -----------------------------------------------------------------------------------------

def test_folders_globs_and_gz_give_the_same_corpus_as_the_plain_files(tmp_path, wordpiece):
    folder = tmp_path / "corpus"
    (folder / "b").mkdir(parents=True)
    shutil.copy(TRAIN, folder / "a.txt")
    with gzip.open(folder / "b" / "c.txt.gz", "wb") as f:
        f.write(VALID.read_bytes())
    (folder / "README.md").write_text("not a corpus file\n")
    (folder / ".hidden.txt").write_text("nor this\n")
    expected = [str(folder / "a.txt"), str(folder / "b" / "c.txt.gz")]
    assert resolve_files(str(folder)) == expected
    assert resolve_files(str(folder / "**" / "*.txt*")) == expected
    assert resolve_files([str(folder / "b" / "c.txt.gz"), str(folder / "a.txt")]) == expected[::-1]

    plain, _ = EncodedCorpus.read([str(TRAIN), str(VALID)], wordpiece, text_format="bert")
    for source in (str(folder), str(folder / "**" / "*.txt*")):
        corpus, _ = EncodedCorpus.read(resolve_files(source), wordpiece, text_format="bert")
        _same_corpus(plain, corpus)
    assert plain.path == f"{TRAIN} and 1 more files"


@pytest.mark.parametrize("make, message", [
    (lambda d: str(d / "missing.txt"), r"missing\.txt does not exist: pass a file, a folder of text files or a glob"),
    (lambda d: str(d / "*.nothing"), r"\*\.nothing matches no file"),
    (lambda d: (d / "empty_folder").mkdir() or str(d / "empty_folder"), "empty_folder is a folder with no text files"),
    (lambda d: [], r"no train_files \(--train-file\) given"),
])
def test_bad_file_arguments_name_the_path_and_what_to_pass(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_data_text(make(tmp_path), 8, tokenizer="wordpiece")


def test_text_that_is_not_utf8_names_the_file_and_offset_also_inside_gz(tmp_path):
    raw = "First sentence here.\nSecond one.\n\nCaf\xe9 au lait.\nIs good.\n".encode("latin1")
    plain = tmp_path / "latin1.txt"
    plain.write_bytes(raw)
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8 text \(invalid byte b'\\xe9' at offset 37\)"):
        load_data_text(str(plain), 8, text_format="bert", tokenizer="wordpiece")
    packed = tmp_path / "latin1.txt.gz"
    packed.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match=r"latin1\.txt\.gz is not UTF-8 text .* at offset 37 of the decompressed"):
        load_data_text(str(packed), 8, text_format="bert", tokenizer="wordpiece")
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(TRAIN.read_bytes())[:5000])
    with pytest.raises(DataError, match=r"broken\.txt\.gz is not a complete gzip file"):
        load_data_text(str(broken), 8, text_format="bert", tokenizer="wordpiece")


def test_a_byte_order_mark_is_not_part_of_the_first_sentence(tmp_path, wordpiece):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + TRAIN.read_bytes())
    with_bom, _ = EncodedCorpus.read(str(path), wordpiece, text_format="bert")
    without, _ = EncodedCorpus.read(str(TRAIN), wordpiece, text_format="bert")
    _same_corpus(with_bom, without)


# --- formats ---------------------------------------------------------------------------------------------

def test_formats_are_detected_both_ways(wikitext2_splits):
    assert detect_format([str(wikitext2_splits / "wiki.valid.tokens")]) == "wikitext"
    assert detect_format([str(TRAIN)]) == "bert"


def _hard_wrapped(path):
    paragraphs = [" ".join(d) for d in _documents(TRAIN)]
    path.write_text("\n\n".join(textwrap.fill(p, 70) for p in paragraphs) + "\n", encoding="utf-8")


def _paragraph_per_line(path):
    path.write_text("\n\n".join(" ".join(d) for d in _documents(TRAIN)) + "\n", encoding="utf-8")


def _wikitext_split_into_sentences(path, wikitext2_splits):
    lines = []
    for line in (wikitext2_splits / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines():
        lines += [s + " ." for s in line.strip().split(" . ") if s] if line.strip() else [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("make, seen", [
    (_hard_wrapped, "of its lines end a sentence: it looks hard-wrapped"),
    (_paragraph_per_line, "of its lines hold several sentences .* none of WikiText's marks"),
    (_wikitext_split_into_sentences, "it has WikiText's marks .* where WikiText's lines are paragraphs"),
])
def test_a_file_that_fits_neither_format_or_both_is_refused_naming_it(tmp_path, wikitext2_splits, make, seen):
    path = tmp_path / "mine.txt"
    if make is _wikitext_split_into_sentences:
        make(path, wikitext2_splits)
    else:
        make(path)
    with pytest.raises(DataError, match=f"cannot tell the format of {path}: .*{seen}.*Pass text_format='bert' "
                                        "or 'wikitext'"):
        load_data_text(str(path), 8, tokenizer="wordpiece")


def test_files_in_different_formats_are_refused(wikitext2_splits):
    with pytest.raises(DataError, match="different formats: .*train.txt is in BERT's format .*wiki.valid.tokens"):
        detect_format([str(TRAIN), str(wikitext2_splits / "wiki.valid.tokens")])


def test_auto_reads_each_format_as_its_explicit_name(wikitext2_splits, wordpiece):
    def tokens(files, **options):
        loader, _ = load_data_text(files, 4096, 64, seed=1, shuffle=False, **options)
        return next(iter(loader)).tokens.asnumpy()
    np.testing.assert_array_equal(tokens(str(TRAIN), tokenizer=wordpiece),
                                  tokens(str(TRAIN), tokenizer=wordpiece, text_format="bert"))
    wiki = str(wikitext2_splits / "wiki.valid.tokens")
    np.testing.assert_array_equal(tokens(wiki), tokens(wiki, text_format="wikitext"))


def test_load_data_wiki_is_load_data_text_on_the_split_file(wiki_dir):
    wiki, wiki_vocab = load_data_wiki(64, 64, data_dir=str(wiki_dir), seed=7)
    text, text_vocab = load_data_text(str(wiki_dir / "wiki.train.tokens"), 64, 64, seed=7)
    assert wiki_vocab.idx_to_token == text_vocab.idx_to_token
    for a, b in zip(next(iter(wiki)), next(iter(text))):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_one_paragraph_per_line_read_as_bert_format_says_which_format_to_pass(tmp_path, wordpiece):
    path = tmp_path / "paragraphs.txt"
    _paragraph_per_line(path)
    with pytest.raises(DataError, match="paragraphs.txt has no document of at least two sentences .* pass "
                                        "text_format='wikitext'"):
        load_data_text(str(path), 8, text_format="bert", tokenizer=wordpiece)


@pytest.mark.parametrize("options, error, message", [
    ({"text_format": "markdown"}, ValueError,
     r"text_format \(--text-format\) must be one of 'auto', 'bert', 'wikitext', got 'markdown'"),
    ({"lowercase": "yes"}, ValueError, r"lowercase \(--lowercase\) must be True or False or None, got 'yes'"),
    ({"tokenizer": "wordpiece", "vocab_size": 3}, ValueError, r"vocab_size \(--vocab-size\) must be an integer >= 6"),
    ({}, DataError, "is in BERT's format \\(raw text\\), which needs a subword tokenizer: pass --tokenizer wordpiece "
                    "\\(tokenizer='wordpiece'"),
    ({"tokenizer": "wordpiece", "vocab": bp.Vocab(["a"])}, ValueError, "either vocab= .* or tokenizer=, not both"),
])
def test_bad_options_are_refused_before_any_work(options, error, message):
    with pytest.raises(error, match=message):
        load_data_text(str(TRAIN), 8, **options)


def test_the_word_vocabulary_is_lower_cased_only(wiki_dir):
    with pytest.raises(ValueError, match=r"lowercase \(--no-lowercase\) keeps the case, but the word-level vocabulary is lower-cased"):
        load_data_text(str(wiki_dir / "wiki.train.tokens"), 8, lowercase=False)


# --- documents -------------------------------------------------------------------------------------------

def test_documents_are_blank_line_runs_and_files_end_documents(tmp_path):
    first = _write_documents(tmp_path / "1.txt", [["a1 a1", "a2"], ["lonely"], ["b1", "b2 b2 b2", "b3"]])
    # no blank line at the start of the second file: its first document is still a new one
    second = _write_documents(tmp_path / "2.txt", [["c1", "c2"], ["d1", "d2"]])
    corpus, vocab = EncodedCorpus.read([first, second], min_freq=1, text_format="bert", lowercase=False)
    assert corpus.paragraph_sizes.tolist() == [2, 3, 2, 2]       # 'lonely' gives no pair: dropped
    assert corpus.sentence_lengths.tolist() == [2, 1, 1, 3, 1, 1, 1, 1, 1]
    assert vocab.to_tokens(corpus.token_ids[:3]) == ["a1", "a1", "a2"]


def test_next_sentence_pairs_stay_inside_a_document_and_negatives_come_from_another(wordpiece):
    dataset, _ = build_dataset(str(TRAIN), 128, seed=5, tokenizer=wordpiece, text_format="bert", cache=False)
    corpus, _ = EncodedCorpus.read(str(TRAIN), wordpiece, text_format="bert", lowercase=False)
    starts = np.concatenate(([0], np.cumsum(corpus.sentence_lengths)[:-1]))
    document_of = dict(zip(starts.tolist(), np.repeat(np.arange(len(corpus.paragraph_sizes)),
                                                       corpus.paragraph_sizes).tolist()))
    pairs = dataset.pairs
    same = np.array([document_of[a] == document_of[b] for a, b in zip(pairs.a_start.tolist(), pairs.b_start.tolist())])
    assert (same[pairs.is_next == 1]).all() and not (same[pairs.is_next == 0]).any()
    assert (pairs.b_start[pairs.is_next == 1] == (pairs.a_start + pairs.a_len)[pairs.is_next == 1]).all()
    assert 0.45 < pairs.is_next.mean() < 0.55
    assert len(np.unique([document_of[b] for b in pairs.b_start.tolist()])) == len(_documents(TRAIN))


def test_sentences_a_tokenizer_encodes_to_nothing_are_dropped_with_documents_left_too_short(tmp_path, wordpiece):
    invisible = "\u200b"  # a zero-width space: the tokenizer's normaliser removes it
    path = _write_documents(tmp_path / "x.txt", [["The king came.", invisible, "He sat down."],
                                                 ["A fox ran.", invisible], ["The end came.", "They slept."]])
    corpus, _ = EncodedCorpus.read(path, wordpiece, text_format="bert")
    assert corpus.paragraph_sizes.tolist() == [2, 2]
    assert (corpus.sentence_lengths > 0).all() and len(corpus.sentence_lengths) == 4


# --- case ------------------------------------------------------------------------------------------------

def test_wordpiece_is_uncased_by_default_and_cased_with_lowercase_false(tmp_path):
    uncased_loader, uncased = load_data_text(str(TRAIN), 8, 64, tokenizer="wordpiece", vocab_size=2000, seed=0)
    cased_loader, cased = load_data_text(str(TRAIN), 8, 64, tokenizer="wordpiece", vocab_size=2000, seed=0,
                                         lowercase=False)
    assert uncased.tokenize("The king") == ["the", "king"]
    assert cased.tokenize("The king") == ["The", "king"] and cased["The"] != cased["the"]
    assert not any(t != t.lower() for t in uncased.idx_to_token if not t.startswith("[") and t != "<unk>")
    # the cased tokenizer's ids: capitals are in the encoded corpus
    ids = cased_loader.dataset.token_ids
    assert any(t[:1].isupper() for t in cased.to_tokens(np.unique(ids)))
    # a lower-casing tokenizer cannot keep the case
    with pytest.raises(ValueError, match=r"lowercase \(--no-lowercase\) keeps the case, but WordPiece trained on .* lower-cases"):
        load_data_text(str(VALID), 8, tokenizer=uncased, lowercase=False)
    # lowercase=True with a cased tokenizer lower-cases the text first, as WikiText's reading does
    lowered, _ = load_data_text(str(VALID), 8, 64, tokenizer=cased, lowercase=True, seed=0)
    assert not any(t[:1].isupper() for t in cased.to_tokens(np.unique(lowered.dataset.token_ids)))
    # a saved cased tokenizer keeps its case when loaded back
    cased.save(str(tmp_path / "tokenizer.json"))
    again, tokenizer = load_data_text(str(VALID), 8, 64, tokenizer=str(tmp_path / "tokenizer.json"), seed=0)
    assert tokenizer.tokenize("The king") == ["The", "king"]


def test_train_wordpiece_reads_folders_globs_and_gz(tmp_path):
    with gzip.open(tmp_path / "train.txt.gz", "wb") as f:
        f.write(TRAIN.read_bytes())
    tokenizer = train_wordpiece(str(tmp_path / "*.gz"), vocab_size=1500)
    assert 1000 < len(tokenizer) <= 1500 and tokenizer.tokenize("The golden bird")[:2] == ["the", "golden"]
    with pytest.raises(DataError, match="WordPiece training file .*nothing does not exist"):
        train_wordpiece(str(tmp_path / "nothing"), vocab_size=100)


# --- the cache -------------------------------------------------------------------------------------------

def test_bert_format_corpus_is_cached_memory_mapped_and_keyed_by_format_and_case(tmp_path, wordpiece, monkeypatch):
    direct, _ = load_encoded_corpus(str(TRAIN), wordpiece, cache=False, text_format="bert", lowercase=False)
    cached, _ = load_encoded_corpus(str(TRAIN), wordpiece, cache=True, cache_dir=tmp_path, text_format="bert",
                                    lowercase=False)
    _same_corpus(direct, cached)
    assert isinstance(cached.token_ids.base.obj, mmap.mmap) and not cached.token_ids.flags.writeable
    (entry,) = os.listdir(tmp_path / "preprocessed")
    meta = json.loads((tmp_path / "preprocessed" / entry / "meta.json").read_text())
    assert meta["text_format"] == "bert" and meta["lowercase"] is False and meta["sources"] == [str(TRAIN)]

    def must_not_read(*args, **kwargs):
        raise AssertionError("the corpus was read again despite a valid cache")
    monkeypatch.setattr(EncodedCorpus, "read", must_not_read)
    _same_corpus(direct, load_encoded_corpus(str(TRAIN), wordpiece, cache=True, cache_dir=tmp_path,
                                             text_format="bert", lowercase=False)[0])
    monkeypatch.undo()
    load_encoded_corpus(str(TRAIN), wordpiece, cache=True, cache_dir=tmp_path, text_format="bert", lowercase=True)
    load_encoded_corpus([str(TRAIN), str(VALID)], wordpiece, cache=True, cache_dir=tmp_path, text_format="bert")
    load_encoded_corpus([str(VALID), str(TRAIN)], wordpiece, cache=True, cache_dir=tmp_path, text_format="bert")
    assert len(os.listdir(tmp_path / "preprocessed")) == 4
    keys = {cache_module.entry_key("0" * 40, text_format=f, lowercase=c) for f in ("bert", "wikitext")
            for c in (True, False)}
    assert len(keys) == 4


def test_auto_caching_counts_gz_files_uncompressed(tmp_path, monkeypatch, wordpiece):
    packed = tmp_path / "train.txt.gz"
    packed.write_bytes(gzip.compress(TRAIN.read_bytes()))
    assert cache_module.text_bytes(str(packed)) == TRAIN.stat().st_size > 3 * packed.stat().st_size
    monkeypatch.setattr(cache_module, "AUTO_CACHE_BYTES", TRAIN.stat().st_size)
    load_encoded_corpus(str(packed), wordpiece, cache="auto", cache_dir=tmp_path / "c", text_format="bert")
    assert len(os.listdir(tmp_path / "c" / "preprocessed")) == 1


def test_a_cached_run_gives_the_same_batches_as_an_uncached_one(tmp_path, wordpiece):
    def first(cache):
        loader, _ = load_data_text(str(TRAIN), 256, 128, tokenizer=wordpiece, seed=2, cache=cache,
                                   cache_dir=tmp_path)
        return next(iter(loader))
    for a, b in zip(first(False), first(True)):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_worker_processes_read_a_memory_mapped_corpus(tmp_path, wordpiece):
    def loader(workers):
        return load_data_text(str(TRAIN), 512, 128, tokenizer=wordpiece, seed=4, cache=True, cache_dir=tmp_path,
                              num_workers=workers)[0]
    for x, y in zip(loader(0), loader(2)):
        for fx, fy in zip(x, y):
            np.testing.assert_array_equal(fx.asnumpy(), fy.asnumpy())


# --- memory ----------------------------------------------------------------------------------------------

def _peak_bytes(function):
    tracemalloc.start()
    try:
        result = function()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def _random_corpus(path, documents, seed):
    """``documents`` documents of 20 sentences of 40 words (Zipf-distributed over 3,000 words)."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(3000)])
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(documents):
            sentences = words[rng.zipf(1.3, size=(20, 40)) % len(words)]
            f.write("\n".join(" ".join(s) + " ." for s in sentences) + "\n\n")
    return str(path)


def test_encoding_and_loading_a_corpus_never_hold_its_ids_whole_in_memory(tmp_path, monkeypatch):
    """With small encoding batches, the peak of Python and numpy allocations while encoding into the cache
    does not grow with the corpus, and loading the entry maps the arrays instead of reading them. Two
    corpora, one three times the other, cancel the fixed costs (read buffers, the vocabulary): building
    the id array from pieces in memory, or np.load without mmap, would add the difference of their ids."""
    monkeypatch.setattr(corpus_module, "_FLUSH_SENTENCES", 256)
    monkeypatch.setattr(corpus_module, "_REMAP_IDS", 1 << 14)
    peaks, ids = {}, {}
    for documents in (1000, 3000):
        path = _random_corpus(tmp_path / f"{documents}.txt", documents, seed=documents)

        def load():
            return load_encoded_corpus(path, min_freq=1, cache=True, cache_dir=tmp_path / "c", text_format="bert")
        cold, (corpus, _) = _peak_bytes(load)
        warm, (again, _) = _peak_bytes(load)
        np.testing.assert_array_equal(corpus.token_ids[-1000:], again.token_ids[-1000:])
        peaks[documents], ids[documents] = (cold, warm), corpus.token_ids.nbytes
    grown = ids[3000] - ids[1000]
    assert grown > 6e6
    cold_growth, warm_growth = (peaks[3000][i] - peaks[1000][i] for i in range(2))
    assert cold_growth < grown / 8, \
        f"encoding peaked {cold_growth / 1e6:.1f} MB higher for {grown / 1e6:.1f} MB more ids"
    assert warm_growth < grown / 8, f"loading the cache peaked {warm_growth / 1e6:.1f} MB higher"
