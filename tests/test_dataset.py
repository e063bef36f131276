"""Padded batches, determinism, epochs and resumption, and clear errors for bad input."""
import numpy as np
import pytest

from bertpretrain.data import CLS_ID, PAD_ID, SEP_ID, DataError, PretrainingBatch, build_dataset, load_data_wiki


def _numpy(batch):
    return PretrainingBatch(*(field.asnumpy() for field in batch))


@pytest.fixture(scope="module")
def loader(wiki_dir):
    train_iter, vocab = load_data_wiki(64, 64, data_dir=str(wiki_dir), seed=7)
    return train_iter


def test_batch_layout_shapes_and_dtypes(loader):
    batch = next(iter(loader))
    assert batch._fields == ("tokens", "segments", "valid_lens", "pred_positions", "mlm_weights", "mlm_labels",
                             "nsp_labels")
    shapes = [(64, 64), (64, 64), (64,), (64, 10), (64, 10), (64, 10), (64,)]
    assert [f.shape for f in batch] == shapes
    assert [f.dtype.name for f in batch] == ["int32"] * 4 + ["float32"] + ["int32"] * 2


def test_padding_specials_and_segments(loader):
    b = _numpy(next(iter(loader)))
    columns = np.arange(64)
    for tokens, segments, n in zip(b.tokens, b.segments, b.valid_lens):
        assert tokens[0] == CLS_ID and tokens[n - 1] == SEP_ID
        assert (tokens[n:] == PAD_ID).all() and (tokens[:n] != PAD_ID).all()
        seps = np.flatnonzero(tokens[:n] == SEP_ID)
        first_sep = seps[0]
        assert len(seps) == 2, "exactly two [SEP] (the masking never inserts or replaces one)"
        assert (segments == ((columns > first_sep) & (columns < n))).all()
    weights = b.mlm_weights.astype(bool)
    assert ((b.pred_positions == 0) == ~weights).all()
    assert (b.mlm_labels[~weights] == 0).all()
    assert (weights.sum(1) == np.maximum(1, np.round(0.15 * b.valid_lens))).all()


def test_same_seed_same_arrays_other_seed_other_arrays(wiki_dir):
    def first_batches(seed):
        it, _ = load_data_wiki(32, 48, data_dir=str(wiki_dir), seed=seed)
        return [_numpy(b) for b, _ in zip(it, range(3))]
    a, b, c = first_batches(11), first_batches(11), first_batches(12)
    for x, y in zip(a, b):
        for fx, fy in zip(x, y):
            np.testing.assert_array_equal(fx, fy)
    assert not np.array_equal(a[0].tokens, c[0].tokens)


def test_epochs_cover_every_example_in_a_new_order_with_an_uneven_last_batch(wiki_dir):
    it, _ = load_data_wiki(1000, 64, data_dir=str(wiki_dir), seed=3)
    n = len(it.dataset)
    assert n % 1000 != 0, "this test needs an uneven last batch"
    epochs = []
    for _ in range(2):
        batches = [_numpy(b) for b in it]
        assert len(batches) == len(it) == -(-n // 1000)
        assert batches[-1].tokens.shape[0] == n % 1000
        epochs.append(np.concatenate([b.tokens for b in batches]))
    assert not np.array_equal(epochs[0], epochs[1]), "the second epoch must be reshuffled"
    key = lambda tokens: sorted(map(bytes, tokens))  # noqa: E731
    assert key(epochs[0]) == key(epochs[1]), "static masks: the same examples every epoch"


def test_dynamic_masking_draws_new_masks_each_epoch(wiki_dir):
    it, _ = load_data_wiki(4096, 64, data_dir=str(wiki_dir), seed=3, shuffle=False, dynamic_masking=True)
    first, second = (_numpy(next(iter(it))) for _ in range(2))
    np.testing.assert_array_equal(first.valid_lens, second.valid_lens)
    assert not np.array_equal(first.pred_positions, second.pred_positions)
    again, _ = load_data_wiki(4096, 64, data_dir=str(wiki_dir), seed=3, shuffle=False, dynamic_masking=True)
    np.testing.assert_array_equal(_numpy(next(iter(again))).tokens, first.tokens)


def test_resume_from_state_dict_continues_the_same_sequence(wiki_dir):
    def loader():
        return load_data_wiki(2048, 64, data_dir=str(wiki_dir), seed=9, dynamic_masking=True)[0]
    reference = loader()
    expected = [_numpy(b).tokens for _ in range(2) for b in reference]
    interrupted = loader()
    seen = []
    for i, b in enumerate(interrupted):
        seen.append(_numpy(b).tokens)
        if i == 2:
            break
    resumed = loader()
    resumed.load_state_dict(interrupted.state_dict())
    seen += [_numpy(b).tokens for b in resumed]
    seen += [_numpy(b).tokens for b in resumed]
    assert len(seen) == len(expected)
    for x, y in zip(seen, expected):
        np.testing.assert_array_equal(x, y)


def test_worker_processes_give_the_same_batches(wiki_dir):
    single, _ = load_data_wiki(2048, 64, data_dir=str(wiki_dir), seed=4)
    workers, _ = load_data_wiki(2048, 64, data_dir=str(wiki_dir), seed=4, num_workers=2)
    for x, y in zip(single, workers):
        for fx, fy in zip(x, y):
            np.testing.assert_array_equal(fx.asnumpy(), fy.asnumpy())


def test_validation_split_uses_the_training_vocabulary(wiki_dir):
    _, vocab = load_data_wiki(8, data_dir=str(wiki_dir), seed=0)
    valid, valid_vocab = load_data_wiki(8, data_dir=str(wiki_dir), split="valid", vocab=vocab, seed=0)
    assert valid_vocab is vocab
    assert _numpy(next(iter(valid))).tokens.max() < len(vocab)


def test_truncate_pairs_keeps_long_pairs(wiki_dir):
    dropped, _ = build_dataset(str(wiki_dir / "wiki.train.tokens"), 32, seed=0)
    truncated, _ = build_dataset(str(wiki_dir / "wiki.train.tokens"), 32, seed=0, truncate_pairs=True)
    assert len(truncated) > len(dropped)
    assert truncated.batch(np.arange(len(truncated))).valid_lens.max() == 32


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"   \n\n  \n", "is empty"),
    (b" = Title = \n One sentence only . \n Another single sentence \n", "no paragraph of at least two sentences"),
    (b" a b . c d . \n", "only one paragraph"),
    (b" caf\xe9 au lait . is good . \n", r"not UTF-8 text \(invalid byte b'\\xe9' at offset 4\)"),
])
def test_bad_corpus_files_raise_clear_errors(tmp_path, content, message):
    (tmp_path / "wiki.train.tokens").write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        load_data_wiki(8, data_dir=str(tmp_path), min_freq=1)
    assert "wiki.train.tokens" in str(error.value)


def test_missing_split_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"wiki\.valid\.tokens does not exist"):
        load_data_wiki(8, data_dir=str(tmp_path), split="valid")


def test_max_len_too_small_for_any_pair(tmp_path):
    (tmp_path / "wiki.train.tokens").write_text(" a b c . d e f \n g h i . j k l \n" * 3)
    with pytest.raises(DataError, match=r"wiki.train.tokens fits max_len=8: the shortest needs 9"):
        load_data_wiki(8, max_len=8, data_dir=str(tmp_path), min_freq=1)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size \\(--batch-size\\) must be an integer >= 1, got 0"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"batch_size": 8, "max_len": 4}, "max_len \\(--max-len\\) must be an integer >= 5"),
    ({"batch_size": 8, "min_freq": 0}, "min_freq"),
    ({"batch_size": 8, "seed": -1}, "seed"),
    ({"batch_size": 8, "num_workers": -1}, "num_workers"),
    ({"batch_size": 8, "min_freq": 10 ** 9}, "no word seen at least min_freq"),
])
def test_bad_arguments_raise_clear_errors(wiki_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_data_wiki(data_dir=str(wiki_dir), **kwargs)


def test_an_examples_masks_do_not_depend_on_its_batch(wiki_dir):
    dataset, _ = build_dataset(str(wiki_dir / "wiki.train.tokens"), 64, seed=2)
    alone = dataset.batch([5, 9])
    mixed = dataset.batch([9, 1, 5, 300])
    for field_alone, field_mixed in zip(alone, mixed):
        np.testing.assert_array_equal(field_alone[0], field_mixed[2])
        np.testing.assert_array_equal(field_alone[1], field_mixed[0])
    item = dataset[9]
    np.testing.assert_array_equal(item.tokens, mixed.tokens[0])


def test_shards_split_each_epoch_into_disjoint_equal_parts(wiki_dir):
    def loader(index):
        it, _ = load_data_wiki(500, 64, data_dir=str(wiki_dir), seed=1)
        return it.shard(index, 3)
    shards = [loader(i) for i in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [np.concatenate([_numpy(b).tokens for b in s]) for s in shards]
    assert len({len(x) for x in seen}) == 1 and len(seen[0]) == len(shards[0].dataset) // 3
    rows = [set(map(bytes, x)) for x in seen]
    assert not (rows[0] & rows[1]) and not (rows[1] & rows[2]) and not (rows[0] & rows[2])
    with pytest.raises(ValueError, match="shard index"):
        shards[0].shard(3, 3)


def _sample_path():
    import os
    from bertpretrain.data import download_extract
    return os.path.join(download_extract("wikitext-2-sample"), "wiki.train.tokens")


def test_dynamic_pairs_draw_new_labels_and_negatives_each_epoch():
    options = dict(seed=3, dynamic_masking=True, truncate_pairs=True)
    dataset, _ = build_dataset(_sample_path(), 64, dynamic_pairs=True, **options)
    everything = np.arange(len(dataset))
    first, second = dataset.batch(everything, 0), dataset.batch(everything, 1)
    assert len(first.nsp_labels) == len(second.nsp_labels) == len(dataset)
    assert 0.1 < (first.nsp_labels != second.nsp_labels).mean() < 0.9  # new labels, about half of them change
    pairs0, pairs1 = dataset.epoch_pairs(0), dataset.epoch_pairs(1)
    np.testing.assert_array_equal(pairs0.a_start, pairs1.a_start)  # the same first sentences, in order
    negatives = (pairs0.is_next == 0) & (pairs1.is_next == 0)
    assert (pairs0.b_start[negatives] != pairs1.b_start[negatives]).mean() > 0.9  # new negatives
    assert (first.valid_lens <= 64).all() and (second.valid_lens <= 64).all()
    # without the option, every epoch has the pairs of epoch 0
    fixed, _ = build_dataset(_sample_path(), 64, **options)
    np.testing.assert_array_equal(fixed.batch(everything, 1).nsp_labels, fixed.batch(everything, 0).nsp_labels)
    np.testing.assert_array_equal(fixed.pairs.is_next, pairs0.is_next)  # epoch 0 is the same draw either way


@pytest.mark.parametrize("options", [dict(dynamic_masking=True), dict(truncate_pairs=True)])
def test_dynamic_pairs_need_dynamic_masks_and_truncation(options):
    with pytest.raises(ValueError, match=r"dynamic_pairs \(--dynamic-pairs\) .* needs dynamic_masking .* and "
                                         r"truncate_pairs"):
        build_dataset(_sample_path(), 64, dynamic_pairs=True, **options)


def test_drop_last_leaves_out_the_short_last_batch_only():
    from bertpretrain.data import download_extract
    folder = download_extract("wikitext-2-sample")
    kept, _ = load_data_wiki(100, 64, data_dir=folder, seed=2)
    n = len(kept.dataset)
    assert n % 100, "the sample must leave a short last batch"
    dropped, _ = load_data_wiki(100, 64, data_dir=folder, seed=2, drop_last=True)
    sizes = [batch.tokens.shape[0] for batch in dropped]
    assert sizes == [100] * (n // 100) == [100] * len(dropped)
    assert [b.tokens.shape[0] for b in kept][-1] == n % 100
    with pytest.raises(ValueError, match=f"drop_last=True with batch_size={n + 1} leaves no batch of the {n} "):
        load_data_wiki(n + 1, 64, data_dir=folder, seed=2, drop_last=True)
