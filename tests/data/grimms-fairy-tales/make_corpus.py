"""Convert the public-domain English text of Grimms' Fairy Tales into BERT's pretraining format.

    python tests/data/grimms-fairy-tales/make_corpus.py pg2591.txt tests/data/grimms-fairy-tales

reads the plain-text edition (see README.md for where it comes from and its SHA1) and writes
``train.txt`` and ``valid.txt``: one sentence per line, a blank line between documents, as Google
BERT's ``create_pretraining_data.py`` reads. A document is one tale, or one numbered part of a tale
that has parts; the last five tales are the validation file. Everything outside the tales (the
distributor's header, licence and footer, the contents, the preparer's notes and the afterword) is
left out, and so is every title: the files hold the translators' text alone.

Sentences are split with a simple rule that suits this text: after ``.``, ``!`` or ``?`` (and any
closing quotes or brackets), when the next word starts with a capital letter or an opening quote.
Paragraphs end sentences too. A sentence ending in a title (Mr., Mrs., Dr., St.) is joined to the
next. Italic marks (``_word_``) and footnote marks (``[*]``) are removed, and spaces collapsed.
"""
import argparse
import pathlib
import re

FIRST_TALE = "THE GOLDEN BIRD"
VALIDATION_TALES = 5
_END_OF_TALES = re.compile(r"^\*{5}$")                 # the line before the afterword
_HEADING = re.compile(r"^(?=.*[A-Z]{2})[^a-z]+$")      # a title: capitals, digits, punctuation only
_FOOTNOTE = re.compile(r"^\s*\[\*\].*$")                # a footnote line, "[*] Simpleton"
_BOUNDARY = re.compile(r"([.!?]['\")\]]*)\s+(?=['\"(\[]?[A-Z])")
_TITLES = ("Mr.", "Mrs.", "Dr.", "St.")


def tales_region(text):
    """The lines from the first tale's title to the end of the last tale."""
    lines = text.replace("\ufeff", "").replace("\r\n", "\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip() == FIRST_TALE]
    if len(starts) < 2:
        raise SystemExit(f"cannot find the title {FIRST_TALE!r} of the first tale after the contents")
    start = starts[1]  # the first occurrence is in the contents
    end = next((i for i in range(start, len(lines)) if _END_OF_TALES.match(lines[i].strip())), None)
    if end is None:
        raise SystemExit("cannot find the '*****' line that ends the last tale")
    return lines[start:end]


def sections(lines):
    """``[(title, level, [paragraph, ...]), ...]``: the text under each title, paragraphs as single strings.

    ``level`` is 0 for a tale, 1 for a part of a tale (a title right under another title, a numbered
    title or "FIRST STORY"): parts belong to the tale above them.
    """
    result, paragraph = [], []

    def end_paragraph():
        if paragraph:
            result[-1][2].append(" ".join(paragraph))
            paragraph.clear()
    previous_was_title = False
    for line in lines:
        stripped = line.strip()
        if _HEADING.match(stripped):
            end_paragraph()
            level = 1 if previous_was_title or re.match(r"^(\d+\.|[A-Z]+ STORY$)", stripped) else 0
            result.append((stripped, level, []))
            previous_was_title = True
        elif not stripped or _FOOTNOTE.match(line):
            end_paragraph()
        else:
            paragraph.append(stripped)
            previous_was_title = False
    end_paragraph()
    return result


def split_sentences(paragraph):
    """The sentences of one paragraph (a list of strings)."""
    text = re.sub(r"\s+", " ", paragraph.replace("[*]", "").replace("_", "")).strip()
    pieces = _BOUNDARY.sub("\\1\n", text).split("\n")
    sentences = []
    for piece in pieces:
        if sentences and sentences[-1].endswith(_TITLES):
            sentences[-1] += " " + piece
        else:
            sentences.append(piece)
    return [s for s in sentences if s]


def documents(text):
    """``[(tale, [sentence, ...]), ...]``: one document per tale or part of a tale, titles left out."""
    docs = []
    tale = None
    for title, level, paragraphs in sections(tales_region(text)):
        if level == 0:
            tale = title
        sentences = [s for p in paragraphs for s in split_sentences(p)]
        if sentences:
            docs.append((tale, sentences))
    return docs


def write(path, docs):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n\n".join("\n".join(sentences) for _, sentences in docs) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=pathlib.Path, help="the plain-text edition (UTF-8)")
    parser.add_argument("out_dir", type=pathlib.Path)
    args = parser.parse_args()
    docs = documents(args.source.read_text(encoding="utf-8"))
    tales = list(dict.fromkeys(tale for tale, _ in docs))
    valid = set(tales[-VALIDATION_TALES:])
    write(args.out_dir / "train.txt", [d for d in docs if d[0] not in valid])
    write(args.out_dir / "valid.txt", [d for d in docs if d[0] in valid])
    for name in ("train.txt", "valid.txt"):
        text = (args.out_dir / name).read_text(encoding="utf-8")
        print(f"{name}: {len(text.encode()):,} bytes, {len(text.split()):,} words, "
              f"{len(text.split(chr(10) * 2)):,} documents, {sum(1 for x in text.splitlines() if x):,} sentences")
    print(f"{len(tales)} tales, the last {VALIDATION_TALES} for validation: {', '.join(tales[-VALIDATION_TALES:])}")


if __name__ == "__main__":
    main()
