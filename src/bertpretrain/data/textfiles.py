"""Text files of a corpus: which files (paths, folders, globs), their lines (plain or ``.gz``), their format.

Two formats are read (see :mod:`bertpretrain.data.corpus` for the reading rules):

- ``'bert'``: Google BERT's pretraining input (``create_pretraining_data.py``): plain text, one
  sentence per line, a blank line between documents.
- ``'wikitext'``: WikiText's files: one paragraph per line, blank lines between them, words and
  punctuation already separated by spaces (``' @-@ '`` inside numbers and hyphenated words),
  headings as ``' = Title = '``.

:func:`detect_format` tells them apart from a sample of each file, and refuses (naming the file and
what it saw) when a file fits neither or both, rather than guess: a wrong guess would silently
turn paragraphs into sentences or the reverse.
"""
import glob
import gzip
import os
import re
import zlib

from .errors import DataError

TEXT_FORMATS = ("bert", "wikitext")
#: What a folder is searched for (any depth; hidden files and folders are skipped).
TEXT_SUFFIXES = (".txt", ".text", ".tokens", ".raw")
DETECT_SAMPLE_BYTES = 256 << 10   # bytes of each file read by detect_format ...
DETECT_TOTAL_BYTES = 16 << 20     # ... at most this much in all (many shards: less of each, at least 16 KB)
_BOM = b"\xef\xbb\xbf"
_WIKITEXT_HEADING = re.compile(r"^(= )+\S.*?( =)+$")               # ' = Title = ', ' = = Section = = '
_WIKITEXT_TOKEN = re.compile(r" @[-,.]@ ")                         # ' @-@ ', ' @,@ ', ' @.@ '
_SENTENCE_END = re.compile(r"[.!?]['\"’”)\]]*$")                   # a line that ends a sentence
_SENTENCE_INSIDE = re.compile(r"[.!?]['\"’”)\]]* +['\"‘“(\[]?[A-Z]")  # a sentence ends inside the line


def _is_text_name(name):
    name = name[:-3] if name.endswith(".gz") else name
    return name.endswith(TEXT_SUFFIXES)


def _folder_files(folder):
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".") and _is_text_name(n)]
    return found


def resolve_files(files, what="text file"):
    """The list of files that ``files`` names: a path, a folder, a glob, or a list of them (in order).

    A folder stands for its text files at any depth (names ending in ``.txt``, ``.text``, ``.tokens`` or
    ``.raw``, optionally ``.gz``), sorted; a glob (``*``, ``?``, ``[``; ``**`` for any depth) for the files
    it matches, sorted. ``what`` names the argument in errors (e.g. ``'train_files'``).

    Raises:
        DataError: a path that does not exist, a glob that matches no file, a folder with no text
            file, or no file at all; each names the path and what to pass instead.
    """
    items = [files] if isinstance(files, (str, os.PathLike)) else list(files or [])
    if not items:
        raise DataError(f"no {what} given: pass a file, a folder of text files or a glob")
    paths = []
    for item in items:
        item = os.path.expanduser(os.fspath(item))
        if os.path.isfile(item):
            paths.append(item)
        elif os.path.isdir(item):
            found = _folder_files(item)
            if not found:
                raise DataError(f"{what} {item} is a folder with no text files (names ending in "
                                f"{', '.join(TEXT_SUFFIXES)}, optionally .gz): pass the files themselves or a "
                                "glob such as 'folder/part-*'")
            paths += found
        elif glob.has_magic(item):
            found = [path for path in sorted(glob.glob(item, recursive=True)) if os.path.isfile(path)]
            if not found:
                raise DataError(f"{what} {item} matches no file: check the pattern (relative to "
                                f"{os.getcwd()}) or pass the files themselves")
            paths += found
        else:
            raise DataError(f"{what} {item} does not exist: pass a file, a folder of text files or a glob")
    return paths


def text_bytes(path):
    """The size of a file's text: its size, or for ``.gz`` the uncompressed size its trailer records
    (modulo 4 GiB, and the last member's only: a lower bound that is exact for ordinary files)."""
    size = os.path.getsize(path)
    if not os.fspath(path).endswith(".gz") or size < 18:
        return size
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return max(size, int.from_bytes(f.read(4), "little"))


def describe(paths):
    """A short name for a list of files in messages and logs: the file, or the first and a count."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return os.fspath(paths[0]) if len(paths) == 1 else f"{os.fspath(paths[0])} and {len(paths) - 1} more files"


class TextFile:
    """The lines of a UTF-8 text file, plain or gzip-compressed (by its ``.gz`` name), as ``str``.

    Iterating yields each line with its end of line; errors name the file: text that is not UTF-8 (with
    the byte offset in the text, decompressed for ``.gz``), a damaged ``.gz``. A UTF-8 byte order mark
    at the start is dropped. ``tell()`` is the position in the file on disk (compressed bytes for
    ``.gz``), for progress bars over :attr:`size`.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.compressed = self.path.endswith(".gz")
        self.size = os.path.getsize(self.path)
        self._raw = None

    def __enter__(self):
        self._raw = open(self.path, "rb")
        return self

    def __exit__(self, *exc):
        self._raw.close()

    def tell(self):
        return self._raw.tell()

    def __iter__(self):
        stream = gzip.GzipFile(fileobj=self._raw, mode="rb") if self.compressed else self._raw
        offset = 0
        try:
            for number, raw in enumerate(stream):
                if number == 0 and raw.startswith(_BOM):
                    raw, offset = raw[len(_BOM):], len(_BOM)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    where = " of the decompressed text" if self.compressed else ""
                    raise DataError(f"{self.path} is not UTF-8 text (invalid byte {raw[error.start:error.start + 1]!r} "
                                    f"at offset {offset + error.start}{where}); convert it to UTF-8 (e.g. iconv -f "
                                    "latin1 -t utf-8) or pass another file") from None
                offset += len(raw)
                yield line
        except (OSError, EOFError, zlib.error) as error:
            if not self.compressed:
                raise
            raise DataError(f"{self.path} is not a complete gzip file ({error}): compress it again "
                            "(gzip -k file) or pass the uncompressed file") from None


def _sample_lines(path, limit):
    lines, size = [], 0
    with TextFile(path) as f:
        for line in f:
            lines.append(line.strip())
            size += len(line)
            if size >= limit:
                break
    return lines


def _format_evidence(lines):
    """Counts that tell the formats apart, over a file's first lines (stripped)."""
    text = [line for line in lines if line]
    follows = sum(1 for a, b in zip(lines, lines[1:]) if a and b)
    headings = sum(1 for line in text if _WIKITEXT_HEADING.match(line))
    body = [line for line in text if not _WIKITEXT_HEADING.match(line)]
    return {
        "lines": len(text),
        "headings": headings,
        "wikitext_tokens": sum(1 for line in text if _WIKITEXT_TOKEN.search(line)),
        # a line directly followed by another: the sentences of a document in BERT's format
        "run_on": follows / max(1, len(text)),
        "ends_sentence": sum(1 for line in body if _SENTENCE_END.search(line)) / max(1, len(body)),
        "several_sentences": sum(1 for line in body if _SENTENCE_INSIDE.search(line) or " . " in line)
                             / max(1, len(body)),
    }


_HOW = ("BERT's format has one sentence per line and a blank line between documents; WikiText's has one "
        "paragraph per line, blank lines between them, ' = Title = ' headings and ' @-@ ' tokens")


def detect_format(paths):
    """``'bert'`` or ``'wikitext'``: the format of the files ``paths``, judged from each one's first 256 KB
    (less for many files: 16 MB in all, at least 16 KB each).

    WikiText: its headings or ``@-@`` tokens, and lines holding several sentences (paragraphs). BERT's
    format: no WikiText marks, lines in runs (the sentences of a document), most ending a sentence
    (``.``, ``!``, ``?``, a closing quote) and few holding several. Any other file (hard-wrapped text,
    one paragraph per line without WikiText's marks, WikiText split into sentences, ...) is refused.

    Raises:
        DataError: a file fits neither format or both, or the files disagree; the message names the
            file, what was seen, and the ``text_format`` to pass when you know it.
    """
    found = {}
    limit = max(16 << 10, min(DETECT_SAMPLE_BYTES, DETECT_TOTAL_BYTES // max(1, len(paths))))
    for path in paths:
        lines = _sample_lines(path, limit)
        e = _format_evidence(lines)
        if not e["lines"]:
            raise DataError(f"{path} is empty: it holds no text to pretrain on")
        marks = e["headings"] + e["wikitext_tokens"]
        if marks and e["several_sentences"] >= 0.3:
            found[path] = "wikitext"
        elif not marks and e["several_sentences"] < 0.2 and e["ends_sentence"] >= 0.5 and e["run_on"] >= 0.3:
            found[path] = "bert"
        else:
            if marks:
                seen = (f"it has WikiText's marks ({e['headings']} ' = Title = ' headings, {e['wikitext_tokens']} "
                        f"lines with ' @-@ ' tokens) but only {e['several_sentences']:.0%} of its lines hold several "
                        "sentences, where WikiText's lines are paragraphs")
            elif e["ends_sentence"] < 0.5:
                seen = (f"only {e['ends_sentence']:.0%} of its lines end a sentence: it looks hard-wrapped (lines "
                        "cut at a width) rather than one sentence per line")
            elif e["several_sentences"] >= 0.2:
                seen = (f"{e['several_sentences']:.0%} of its lines hold several sentences (one paragraph per line?) "
                        "but it has none of WikiText's marks")
            else:
                seen = (f"only {e['run_on']:.0%} of its lines are followed by another line of the same document: "
                        "documents of one sentence give no sentence pairs")
            raise DataError(f"cannot tell the format of {path}: {seen}. {_HOW}. Pass text_format='bert' or "
                            "'wikitext' if you know it, or convert the file to one sentence per line with a blank "
                            "line between documents")
    formats = sorted(set(found.values()))
    if len(formats) > 1:
        example = {fmt: next(p for p, f in found.items() if f == fmt) for fmt in formats}
        raise DataError(f"the files are in different formats: {example['bert']} is in BERT's format (one sentence "
                        f"per line) and {example['wikitext']} in WikiText's; pass files of one format, or "
                        "text_format= to read them all one way")
    return formats[0]
