"""The WordPiece option: training, loading, vectorised corpus encoding, caching and (whole-word) masking."""
import json
import os

import numpy as np
import pytest

from bertpretrain.data import (CLS_ID, MASK_ID, NUM_RESERVED, RESERVED_TOKENS, SEP_ID, DataError,
                               Vocab, WordPieceTokenizer, build_dataset, choose_mlm_positions,
                               choose_whole_word_positions, download_extract, iter_paragraphs, load_data_wiki,
                               load_encoded_corpus,
                               load_tokenizer, train_wordpiece, word_level_tokenizer)
from bertpretrain.data.cache import entry_key
from masking_checks import check_masks


@pytest.fixture(scope="module")
def sample_file():
    return os.path.join(download_extract("wikitext-2-sample"), "wiki.train.tokens")


@pytest.fixture(scope="module")
def wordpiece(sample_file):
    return train_wordpiece([sample_file], vocab_size=1200)


def test_trained_wordpiece_reserves_bertpretrains_ids(wordpiece):
    assert isinstance(wordpiece, WordPieceTokenizer)
    assert wordpiece.to_tokens(range(NUM_RESERVED)) == list(RESERVED_TOKENS)
    assert 1000 < len(wordpiece) <= 1200
    assert wordpiece["<unk>"] == 0 and wordpiece["[MASK]"] == MASK_ID
    pieces = wordpiece.tokenize("The <unk> crane was unbelievably fast")
    assert pieces[0] == "the" and pieces[1] == "<unk>"       # lower-cased; WikiText's <unk> stays whole
    assert any(p.startswith("##") for p in pieces)          # rare words split into pieces
    assert wordpiece.continuation.tolist() == [t.startswith("##") for t in wordpiece.idx_to_token]


def test_batch_encoding_matches_one_sentence_at_a_time(wordpiece):
    sentences = ["the game was released in japan", "unbelievably , it sold well", "<unk> <unk>"]
    ids, lengths = wordpiece.encode_sentences(sentences)
    expected = [wordpiece[wordpiece.tokenize(s)] for s in sentences]
    assert lengths.tolist() == [len(e) for e in expected]
    assert ids.dtype == np.int32 and ids.tolist() == sum(expected, [])


def test_word_level_tokenizer_gives_the_vocab_ids(sample_file):
    vocab = Vocab(open(sample_file, encoding="utf-8").read().lower().split(), min_freq=3)
    tokenizer = word_level_tokenizer(vocab)
    text = "The Game was RELEASED in zzyzx-unknown-word , <unk> again"
    assert tokenizer.encode(text, add_special_tokens=False).ids == vocab[text.lower().split()]
    pair = tokenizer.encode("a b", "c")
    assert pair.ids == vocab[["[CLS]", "a", "b", "[SEP]", "c", "[SEP]"]] and pair.type_ids == [0, 0, 0, 0, 1, 1]
    assert load_tokenizer(tokenizer).idx_to_token == vocab.idx_to_token  # read back as a Vocab


def test_google_layout_vocab_txt_gets_reserved_ids_moved(tmp_path):
    pieces = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cr", "##ane", "fly"]
    path = tmp_path / "vocab.txt"
    path.write_text("".join(p + "\n" for p in pieces), encoding="utf-8")
    tokenizer = load_tokenizer(str(path))
    order = tokenizer.source_order
    assert tokenizer.to_tokens(range(NUM_RESERVED)) == ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]
    assert sorted(order.tolist()) == list(range(len(pieces)))
    # every piece keeps its string: new id i is old id order[i]
    assert [pieces[old] for old in order] == tokenizer.idx_to_token
    encoded = tokenizer.tokenizer.encode("The crane zzz", "fly")
    assert encoded.tokens == ["[CLS]", "the", "cr", "##ane", "[UNK]", "[SEP]", "fly", "[SEP]"]
    assert encoded.ids[0] == CLS_ID and encoded.ids[5] == SEP_ID and encoded.ids[4] == 0


def test_bad_tokenizer_sources_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nothere.json"):
        load_tokenizer(str(tmp_path / "nothere.json"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="tokenizer.json"):
        load_tokenizer(str(bad))
    with pytest.raises(DataError, match="missing.tokens"):
        train_wordpiece([str(tmp_path / "missing.tokens")], vocab_size=100)


def test_wordpiece_corpus_is_cached_under_the_tokenizers_key(sample_file, wordpiece, tmp_path):
    direct, _ = load_encoded_corpus(sample_file, wordpiece, cache=False)
    sentences = [sentence for paragraph in iter_paragraphs(sample_file) for sentence in paragraph]
    assert direct.token_ids.tolist() == wordpiece.encode_sentences(sentences)[0].tolist()
    cached, _ = load_encoded_corpus(sample_file, wordpiece, cache=True, cache_dir=tmp_path)
    again, tokenizer = load_encoded_corpus(sample_file, wordpiece, cache=True, cache_dir=tmp_path)
    assert tokenizer is wordpiece
    np.testing.assert_array_equal(again.token_ids, direct.token_ids)
    np.testing.assert_array_equal(again.sentence_lengths, direct.sentence_lengths)
    other = train_wordpiece([sample_file], vocab_size=900)
    keys = {entry_key("sha", wordpiece), entry_key("sha", other), entry_key("sha", None)}
    assert len(keys) == 3


@pytest.mark.parametrize("whole_word", [False, True])
def test_wordpiece_masking_statistics(sample_file, wordpiece, whole_word):
    dataset, tokenizer = build_dataset(sample_file, 64, seed=3, tokenizer=wordpiece, whole_word_masking=whole_word,
                                       cache=False)
    original, chosen = check_masks(dataset, rate=(0.145 if whole_word else 0.14, 0.16))
    continuation = wordpiece.continuation[original] & (original >= NUM_RESERVED)
    # a chosen continuation piece whose word start is not chosen (or the reverse) = a split word
    split = (continuation[:, 1:] & (chosen[:, 1:] != chosen[:, :-1])).sum()
    if whole_word:
        assert continuation.any() and split == 0
    else:
        assert split > 0, "independent masking should split some words"


def test_whole_word_positions_respect_the_budget_and_cover_words_uniformly():
    rng = np.random.default_rng(0)
    draws = 20000
    a_len, b_len = np.full(draws, 9), np.full(draws, 10)  # L = 22 -> 3 predictions
    # a: words of 1, 2, 3, 1, 2 pieces; b: ten one-piece words
    starts_a = [1, 1, 0, 1, 0, 0, 1, 1, 0]
    word_start = np.tile(np.array(starts_a + [1] * 10, dtype=bool), (draws, 1))
    positions, counts = choose_whole_word_positions(a_len, b_len, word_start, 5, rng)
    assert (counts == 3).all()      # one-piece words always fill the budget
    assert (positions[:, 3:] == 0).all() and (np.diff(positions[:, :3], axis=1) > 0).all()
    hits = np.bincount(positions[:, :3].ravel(), minlength=22) / draws
    assert hits[[0, 10, 21]].sum() == 0
    # positions 2-3 and 4-6 are the pieces of two words: always chosen together
    assert hits[2] == hits[3] > 0 and hits[4] == hits[5] == hits[6] > 0
    # words in random order: a one-piece word ahead of them; the 3-piece word fits only as the first word taken
    assert hits[1] > hits[2] > hits[4]
    plain, plain_counts = choose_mlm_positions(a_len[:5], b_len[:5], 5, rng)
    assert plain_counts.tolist() == counts[:5].tolist()


def test_a_tokenizer_travels_as_its_json_text(wordpiece):
    """What a distributed run sends from rank 0 to the other workers: to_json() reads back as the same tokenizer."""
    again = load_tokenizer(wordpiece.to_json())
    assert again.idx_to_token == wordpiece.idx_to_token and again.digest == wordpiece.digest
    assert again.tokenize("The <unk> crane") == wordpiece.tokenize("The <unk> crane")


def test_whole_word_masking_can_leave_unknown_words_out(wordpiece):
    """The default recipe never masks the unknown token; whole-word masking on top of it never chooses a word
    that has an excluded piece, and fills the budget from the others."""
    draws = 2000
    a_len, b_len = np.full(draws, 5), np.full(draws, 5)
    word_start = np.tile(np.array([1, 1, 0, 1, 1] + [1] * 5, dtype=bool), (draws, 1))
    excluded = np.zeros_like(word_start)
    excluded[:, [3, 6]] = True                                  # the one-piece words at "a b" columns 3 and 6
    before, _ = choose_whole_word_positions(a_len, b_len, word_start, 5, np.random.default_rng(1))
    positions, counts = choose_whole_word_positions(a_len, b_len, word_start, 5, np.random.default_rng(1),
                                                    excluded)
    hits = np.bincount(positions.ravel(), minlength=13)
    assert hits[4] == hits[8] == 0 and hits[[1, 2, 3, 5, 7, 9, 10, 11]].min() > 0   # columns 3, 6 -> positions 4, 8
    assert (counts == 2).all()                                  # the budget is filled from the other words
    assert not np.array_equal(before, positions)
    data = load_data_wiki(16, 64, "wikitext-2-sample", tokenizer=wordpiece, whole_word_masking=True,
                          unk_targets=False, seed=0, cache=False)[0]
    labels = [b.mlm_labels.asnumpy()[b.mlm_weights.asnumpy() > 0] for b in data]
    assert all((label != 0).all() for label in labels) and sum(map(len, labels)) > 0  # never <unk> (id 0)


def test_wordpiece_pretraining_loader_on_the_bundled_sample(wordpiece, tmp_path):
    tokenizer_file = tmp_path / "tokenizer.json"
    wordpiece.save(str(tokenizer_file))
    assert json.loads(tokenizer_file.read_text())["model"]["type"] == "WordPiece"
    loader, tokenizer = load_data_wiki(16, 64, "wikitext-2-sample", tokenizer=str(tokenizer_file), seed=0,
                                       whole_word_masking=True, cache=False)
    assert tokenizer.idx_to_token == wordpiece.idx_to_token
    batch = next(iter(loader))
    tokens = batch.tokens.asnumpy()
    assert tokens.shape == (16, 64) and tokens.max() < len(wordpiece) and (tokens[:, 0] == CLS_ID).all()
    with pytest.raises(ValueError, match="not both"):
        build_dataset(os.path.join(download_extract("wikitext-2-sample"), "wiki.train.tokens"), vocab=tokenizer,
                      tokenizer=tokenizer)


def test_a_wordpiece_run_checkpoints_its_tokenizer_json_and_resumes_only_with_it(tmp_path, monkeypatch, capsys):
    """Checkpoints save the tokenizer as save_pretrained does (tokenizer.json, in the SHA-256 manifest),
    resume with it, and refuse a different tokenizer naming both."""
    from bertpretrain import cli
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "cache"))
    run = tmp_path / "run"
    args = ["pretrain", "--dataset", "wikitext-2-sample", "--tokenizer", "wordpiece", "--vocab-size", "800",
            "--batch-size", "8", "--max-len", "32", "--devices", "cpu", "--output-dir", str(run), "--no-progress"]
    assert cli.main([*args, "--num-steps", "2"]) == 0
    checkpoint = run / "checkpoints" / "step-00000002"
    files = json.loads((checkpoint / "state.json").read_text())["files"]
    assert sorted(files) == ["config.json", "model.params", "tokenizer.json", "trainer.states"]
    assert (checkpoint / "tokenizer.json").read_bytes() == (run / "model" / "tokenizer.json").read_bytes()
    saved = load_tokenizer(str(checkpoint / "tokenizer.json"))
    assert isinstance(saved, WordPieceTokenizer) and saved.source_order is None  # ids are the file's own
    assert saved.idx_to_token == load_tokenizer(str(run / "tokenizer.json")).idx_to_token

    assert cli.main([*args, "--num-steps", "3", "--resume"]) == 0
    assert json.loads((run / "history.json").read_text())["history"]["step"] == [1, 2, 3]

    capsys.readouterr()
    word_level = [arg if arg != "wordpiece" else "word" for arg in args]
    assert cli.main([*word_level, "--num-steps", "4", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "step-00000003" in err
    assert "tokenizer: a WordPiece tokenizer (tokenizer.json) in the checkpoint, a word-level vocabulary " \
           "(vocab.json) now" in err
