"""Corpus-scale benchmark: a ~100M-word corpus in each text format, cold cache build and warm start.

- ``wikitext``: the real WikiText-2 validation and test splits, replicated with the articles of each
  copy in a new random order, read by ``load_data_wiki`` (word vocabulary, max_len 64: d2l's).
- ``bert``: the Grimm tales of ``tests/data/grimms-fairy-tales/train.txt`` (BERT's format: one sentence
  per line, blank lines between documents), replicated with the documents of each copy in a new
  random order, read by ``load_data_text`` with a WordPiece tokenizer trained on that file (30,522
  pieces asked for; the tales have fewer words than that), max_len 128 (BERT's first phase).

Each step runs in a fresh process: for ``bert``, training the tokenizer on the corpus; then the cold
run, which encodes the corpus and writes the on-disk cache, and the warm run, which finds it. Each
reports the seconds from the call of the loader (or the trainer) to its first batch (or its end),
the CPU seconds of the whole process (all threads, import included: on a shared machine the wall
time varies with the load, the CPU time much less), and its peak RSS (the kernel's high-water mark, VmHWM); the load runs also split their final RSS into
anonymous memory and file-backed pages (the memory-mapped cache, which the kernel can drop).

    python benchmarks/bench_scale.py [--words 100e6] [--formats wikitext bert] [--workdir /tmp/bertpretrain-scale]

Targets on the 2-core reference machine: cold build under 3 minutes with peak RSS under 1 GB in both
formats; a warm start under 5 s.
"""
import argparse
import json
import pathlib
import random
import re
import resource
import shutil
import time

from common import TEST_DATA, WIKITEXT2, child_json, header, import_library

BERT_TEXT = TEST_DATA / "grimms-fairy-tales" / "train.txt"

def run_job(job):
    """In a fresh child: one step of ``job``; seconds to the first batch (or to the end of training),
    import time, sizes, memory."""
    start = time.perf_counter()
    import_library()
    from bertpretrain.data import load_data_text, load_data_wiki, load_tokenizer, train_wordpiece
    imported = time.perf_counter()
    result = {}
    if job["step"] == "tokenizer":
        tokenizer = train_wordpiece(job["corpus"], vocab_size=30522)
        tokenizer.save(job["tokenizer"])
        result["vocab"] = len(tokenizer)
    else:
        if job["format"] == "wikitext":
            loader, vocab = load_data_wiki(512, 64, data_dir=job["data_dir"], cache=True, cache_dir=job["cache_dir"],
                                           seed=0)
        else:
            loader, vocab = load_data_text(job["corpus"], 512, 128, text_format="bert",
                                           tokenizer=load_tokenizer(job["tokenizer"])[0], cache=True,
                                           cache_dir=job["cache_dir"], seed=0)
        next(iter(loader))
        result.update(examples=len(loader.dataset), tokens=len(loader.dataset.token_ids), vocab=len(vocab))
    done = time.perf_counter()
    with open("/proc/self/status") as f:
        status = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in f
                  if line.startswith(("VmHWM", "RssAnon", "RssFile"))}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(import_s=imported - start, seconds=done - imported, cpu_s=usage.ru_utime + usage.ru_stime,
                  peak_rss_mb=status["VmHWM"], anon_mb=status["RssAnon"], file_mb=status["RssFile"])
    return result


def build_wikitext(target_words, path, seed=0):
    """Write ~target_words words of WikiText-2 articles, each copy shuffled at the article level."""
    text = "".join((WIKITEXT2 / f"wiki.{s}.tokens").read_text(encoding="utf-8") for s in ("valid", "test"))
    articles = re.split(r"(?m)^(?= = [^=].* = \n)", text)
    return _replicate(articles, "", len(text.split()), target_words, path, seed)


def build_bert(target_words, path, seed=0):
    """Write ~target_words words of the Grimm tales in BERT's format, each copy shuffled by document."""
    text = BERT_TEXT.read_text(encoding="utf-8")
    documents = [d + "\n" for d in text.strip("\n").split("\n\n")]
    return _replicate(documents, "\n", len(text.split()), target_words, path, seed)


def _replicate(parts, separator, words_per_copy, target_words, path, seed):
    copies = max(1, round(target_words / words_per_copy))
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(copies):
            rng.shuffle(parts)
            f.write(separator.join(parts) + separator)
    return copies * words_per_copy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=float, default=100e6)
    parser.add_argument("--formats", nargs="+", choices=("wikitext", "bert"), default=["wikitext", "bert"])
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/bertpretrain-scale"))
    parser.add_argument("--child", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_job(json.loads(args.child))))
        return
    header(f"{__doc__.splitlines()[0]} ({time.strftime('%Y-%m-%d %H:%M')})")
    for text_format in args.formats:
        work = args.workdir / text_format
        shutil.rmtree(work, ignore_errors=True)
        (work / "data").mkdir(parents=True)
        corpus = work / "data" / ("wiki.train.tokens" if text_format == "wikitext" else "train.txt")
        start = time.perf_counter()
        words = (build_wikitext if text_format == "wikitext" else build_bert)(args.words, corpus)
        print(f"{text_format}: {words / 1e6:.1f}M words, {corpus.stat().st_size / 2 ** 20:.0f} MB "
              f"(written in {time.perf_counter() - start:.1f} s)")
        job = {"format": text_format, "corpus": str(corpus), "data_dir": str(corpus.parent),
               "cache_dir": str(work / "cache"), "tokenizer": str(work / "tokenizer.json")}
        steps = (["tokenizer"] if text_format == "bert" else []) + ["cold", "warm"]
        for step in steps:
            r = child_json([__file__, "--child", json.dumps(dict(job, step=step))])
            what = "trained" if step == "tokenizer" else "to the first batch"
            line = (f"  {step}: {r['seconds']:.1f} s {what} (+{r['import_s']:.1f} s import; {r['cpu_s']:.1f} CPU s in "
                    f"all threads), peak RSS {r['peak_rss_mb']:.0f} MB")
            if step != "tokenizer":
                line += (f" (at the end: {r['anon_mb']:.0f} MB anonymous, {r['file_mb']:.0f} MB file-backed), "
                         f"{r['tokens']:,} tokens, {r['examples']:,} examples")
            print(line + f", vocabulary {r['vocab']:,}", flush=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
