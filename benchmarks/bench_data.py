"""Data pipeline benchmark: the real WikiText-2 validation + test splits to padded pretraining arrays.

Times the whole pipeline (read, vocabulary, NSP pairs, MLM masks, padded arrays for every example),
after import, as a training run pays it, and prints words/s, examples, seconds and peak RSS.

    python benchmarks/bench_data.py [--repeat 5] [--max-len 64]

Target on the 2-core reference machine: under 0.2 s for the 455K words.
"""
import argparse
import pathlib
import resource
import statistics
import tempfile
import time

import numpy as np

from bertpretrain.data import build_dataset

SPLITS = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "wikitext-2"  # the real valid + test splits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", "--data-dir", type=pathlib.Path, default=SPLITS,
                        help="folder with wiki.valid/test.tokens")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=64)
    args = parser.parse_args()

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
    best, median = min(seconds), statistics.median(seconds)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"corpus: {words:,} words (WikiText-2 valid+test), max_len {args.max_len}")
    print(f"examples: {len(dataset):,}, vocabulary: {len(vocab):,}, tokens array {arrays.tokens.shape}")
    print(f"seconds: best {best:.3f}, median {median:.3f} over {args.repeat} runs")
    print(f"words/s: {words / median:,.0f} (median)")
    print(f"peak RSS: {peak_mb:.0f} MB (process, MXNet import included)")


if __name__ == "__main__":
    main()
