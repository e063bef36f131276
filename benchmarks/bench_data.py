"""Data pipeline benchmark: the real WikiText-2 validation + test splits to padded pretraining arrays.

Times the whole pipeline (read, vocabulary, NSP pairs, MLM masks, padded arrays for every example),
after import, as a training run pays it, and prints words/s, examples, seconds and peak RSS. Then the
same with BERT's WordPiece tokenizer (trained once on the corpus, timed apart; needs ``tokenizers``):
batch encoding in the Rust tokenizer, with independent and with whole-word masking.

    python benchmarks/bench_data.py [--repeat 5] [--max-len 64] [--wordpiece-vocab-size 30522 | 0 to skip]

Target on the 2-core reference machine: under 0.2 s for the 455K words.
"""
import argparse
import pathlib
import resource
import statistics
import tempfile
import time

from common import WIKITEXT2, header, import_library


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", "--data-dir", type=pathlib.Path, default=WIKITEXT2,
                        help="folder with wiki.valid/test.tokens")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--wordpiece-vocab-size", type=int, default=30522, help="0: skip the WordPiece path")
    args = parser.parse_args()
    header(__doc__.splitlines()[0])
    import_library()
    import numpy as np
    from bertpretrain.data import build_dataset

    with tempfile.TemporaryDirectory() as tmp:
        corpus = pathlib.Path(tmp) / "wiki.train.tokens"
        corpus.write_bytes(b"".join((args.data / f"wiki.{s}.tokens").read_bytes() for s in ("valid", "test")))
        words = len(corpus.read_text(encoding="utf-8").split())
        seconds = []
        for seed in range(args.repeat):
            start = time.perf_counter()
            dataset, vocab = build_dataset(str(corpus), args.max_len, seed=seed)
            arrays = dataset.batch(np.arange(len(dataset)))  # every example padded, as an epoch does
            seconds.append(time.perf_counter() - start)
        if args.wordpiece_vocab_size:
            wordpiece = _bench_wordpiece(corpus, words, args)
    best, median = min(seconds), statistics.median(seconds)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"corpus: {words:,} words (WikiText-2 valid+test), max_len {args.max_len}")
    print(f"examples: {len(dataset):,}, vocabulary: {len(vocab):,}, tokens array {arrays.tokens.shape}")
    print(f"seconds: best {best:.3f}, median {median:.3f} over {args.repeat} runs")
    print(f"words/s: {words / median:,.0f} (median)")
    print(f"peak RSS: {peak_mb:.0f} MB (process, MXNet import included)")
    if args.wordpiece_vocab_size:
        print("\n".join(wordpiece))


def _bench_wordpiece(corpus, words, args):
    """The WordPiece path on the same corpus: lines to print."""
    import numpy as np
    from bertpretrain.data import build_dataset, train_wordpiece

    start = time.perf_counter()
    tokenizer = train_wordpiece([str(corpus)], vocab_size=args.wordpiece_vocab_size)
    lines = [f"WordPiece: trained {len(tokenizer):,} pieces in {time.perf_counter() - start:.2f} s"]
    for whole_word in (False, True):
        seconds = []
        for seed in range(args.repeat):
            start = time.perf_counter()
            dataset, _ = build_dataset(str(corpus), args.max_len, seed=seed, tokenizer=tokenizer,
                                       whole_word_masking=whole_word, cache=False)
            arrays = dataset.batch(np.arange(len(dataset)))
            seconds.append(time.perf_counter() - start)
        median = statistics.median(seconds)
        pieces = len(dataset.token_ids)
        lines.append(f"WordPiece{' + whole-word masking' if whole_word else ''}: {len(dataset):,} examples, "
                     f"{pieces:,} pieces, best {min(seconds):.3f} s, median {median:.3f} s, "
                     f"{words / median:,.0f} words/s, tokens array {arrays.tokens.shape}")
    return lines


if __name__ == "__main__":
    main()
