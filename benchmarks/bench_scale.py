"""WikiText-103-scale benchmark: a ~100M-word corpus, cold cache build and warm start.

Builds the corpus by replicating the real WikiText-2 validation and test splits, with the articles
of each copy in a new random order, then runs two fresh processes on it: the first encodes the
corpus and writes the on-disk cache (cold), the second finds the cache (warm). Each reports the
seconds from the call of ``load_data_wiki`` to its first batch, and its peak RSS.

    python benchmarks/bench_scale.py [--words 100e6] [--workdir /tmp/bertpretrain-scale]

Targets on the 2-core reference machine: cold build under 3 minutes with peak RSS under 2 GB;
a warm start under 5 s.
"""
import argparse
import json
import pathlib
import random
import re
import resource
import shutil
import time

from common import WIKITEXT2, child_json, header, import_library


def build_corpus(target_words, path, seed=0):
    """Write ~target_words words of WikiText-2 articles, each copy shuffled at the article level."""
    text = "".join((WIKITEXT2 / f"wiki.{s}.tokens").read_text(encoding="utf-8") for s in ("valid", "test"))
    articles = re.split(r"(?m)^(?= = [^=].* = \n)", text)
    words_per_copy = len(text.split())
    copies = max(1, round(target_words / words_per_copy))
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(copies):
            rng.shuffle(articles)
            f.write("".join(articles))
    return copies * words_per_copy


def first_batch(data_dir, cache_dir):
    """In a fresh child: import, then ``load_data_wiki`` with the cache up to its first batch; what it took."""
    start = time.perf_counter()
    import_library()
    from bertpretrain.data import load_data_wiki
    imported = time.perf_counter()
    loader, vocab = load_data_wiki(512, 64, data_dir=data_dir, cache=True, cache_dir=cache_dir, seed=0)
    next(iter(loader))
    done = time.perf_counter()
    return {"import_s": imported - start, "seconds": done - imported, "examples": len(loader.dataset),
            "vocab": len(vocab), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=float, default=100e6)
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/bertpretrain-scale"))
    parser.add_argument("--child", nargs=2, metavar=("DATA_DIR", "CACHE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(first_batch(*args.child)))
        return
    header(__doc__.splitlines()[0])
    data_dir, cache_dir = args.workdir / "data", args.workdir / "cache"
    shutil.rmtree(args.workdir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    start = time.perf_counter()
    words = build_corpus(args.words, data_dir / "wiki.train.tokens")
    size_mb = (data_dir / "wiki.train.tokens").stat().st_size / 2 ** 20
    print(f"corpus: {words / 1e6:.1f}M words, {size_mb:.0f} MB (written in {time.perf_counter() - start:.1f} s)")
    for name in ("cold", "warm"):
        r = child_json([__file__, "--child", data_dir, cache_dir])
        print(f"{name}: {r['seconds']:.1f} s to the first batch (+{r['import_s']:.1f} s import), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, {r['examples']:,} examples, vocabulary {r['vocab']:,}")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
