"""Cleaners: the files a corpus package ships -> plain-text documents.

Each cleaner takes the archive members a corpus reads (path -> bytes, sorted by path)
and yields documents, paragraphs separated by a blank line. They live apart from the
fetching code in ``corpora.py`` because they are where the corpus-specific knowledge
is (tag formats, markup, encodings), and they change for different reasons.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator

log = logging.getLogger("mlpmem_lightning.data.corpora")
Members = dict[str, bytes]  # archive member path -> raw bytes, sorted by path

# ---------------------------------------------------------------------------- text
_ODD_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\xa0\xad\u1680\u2000-\u200b\u202f\u205f\u2060\u3000\ufeff]")


def _fix_char(match: re.Match[str]) -> str:
    """Odd spaces become spaces, invisible marks go, C1 controls (cp1252 read as latin-1) become cp1252's."""
    ch = match.group()
    if "\x80" <= ch <= "\x9f":
        return ch.encode("latin-1").decode("cp1252", errors="ignore")
    return " " if unicodedata.category(ch) == "Zs" else ""


def normalize(text: str) -> str:
    """NFC, plain single spaces inside lines, no trailing blanks, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _ODD_CHARS.sub(_fix_char, text)
    text = re.sub(r"[ \t]+$", "", re.sub(r"(?<=\S)[ \t]{2,}", " ", text), flags=re.M)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks."""
    return [b.strip("\n") for b in re.split(r"\n[ \t]*\n", text) if b.strip()]


# ------------------------------------------------------------------------ cleaners
def clean_wiki(members: Members) -> Iterator[str]:
    """One document per article lead, sorted by title; its single newlines separate paragraphs."""
    for raw in members.values():
        articles = json.loads(raw)
        for title in sorted(articles):
            yield articles[title].get("extract", "").replace("\n", "\n\n")


_OPENERS, _CLOSERS = {"``", "(", "["}, {".", ",", ";", ":", "?", "!", ")", "]", "''", "'"}


def detokenize(tokens: Iterable[str]) -> str:
    """Brown tokens back to prose: no space before closing or after opening punctuation.

    The sentence period after an abbreviation ("Jr. .") and the corpus's doubled
    semicolons ("; ;", 2,781 of them) are written once; the quote tokens `` and '' become ".
    """
    out: list[str] = []
    attach = True
    for word in tokens:
        if out and word in ".,;:?!" and out[-1].endswith(word):
            continue
        if out and not attach and word not in _CLOSERS:
            out.append(" ")
        out.append('"' if word in ("``", "''") else word)
        attach = word in _OPENERS
    return "".join(out)


def _brown_paragraphs(text: str) -> Iterator[list[str]]:
    """Untagged tokens per paragraph (a blank-line block); a headline line (all tags ``-hl``) stands alone."""
    for block in _paragraphs(text):
        para: list[str] = []
        for line in block.split("\n"):
            words = [t.rsplit("/", 1)[0] for t in line.split()]  # the tag follows the last "/"
            if words and all(t.endswith("-hl") for t in line.split()):
                yield words
            else:
                para += words
        if para:
            yield para


def clean_brown(members: Members) -> Iterator[str]:
    """One document per Brown text (ca01..cr09), tags removed."""
    for raw in members.values():
        yield "\n\n".join(map(detokenize, _brown_paragraphs(raw.decode("ascii"))))


def clean_nlp_corpus(members: Members) -> Iterator[str]:
    """One document per build file: its 1,000 shuffled, unrelated sentences, one per line."""
    for raw in members.values():
        yield "\n".join(s.strip() for s in json.loads(raw) if isinstance(s, str) and s.strip())


def clean_bbc(members: Members) -> Iterator[str]:
    """One document per article (headline, blank line, paragraphs).

    sports/199.txt is cp1252, not UTF-8 (a bare 0xA3 pound sign): files that are not
    UTF-8 are read as cp1252, which decodes every byte that file holds correctly.
    """
    for path, raw in members.items():
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            log.info("bbc-news: %s is not UTF-8, reading it as cp1252", path)
            yield raw.decode("cp1252", errors="replace")


_SPEAKER = re.compile(r"\*\*[^*]+\*\*")
_HEADING = re.compile(r"(ACT|SCENE) [IVXL]+\b")  # a few scene headings are not markdown headings
_DIRECTION_BLOCK = re.compile(r"(_[^_].*_|\*[^*].*\*)", re.S)
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")


def _speech(block: str) -> str:
    """A block of verse lines as one prose paragraph, without speaker, directions or markdown."""
    lines = [ln.strip() for ln in block.split("\n")]
    text = " ".join(ln for ln in lines if ln and not _SPEAKER.fullmatch(ln) and not _HEADING.match(ln))
    text = _INLINE_DIRECTION.sub("", text).replace("\\-", "-").replace("\\", "")
    return re.sub(r"(?<!\w)[*_]+|[*_]+(?!\w)", "", text).strip()


def clean_shakespeare(members: Members) -> Iterator[str]:
    """One document per scene (text between markdown headings), one paragraph per speech.

    Speaker tags (``**NAME**``), stage-direction blocks (``_Enter ..._``) and inline
    directions (``_[Aside]_``) are dropped; the verse lines of a speech are joined by spaces.
    """
    for raw in members.values():
        for section in re.split(r"(?m)^#.*$", raw.decode("utf-8")):
            blocks = (b for b in _paragraphs(section) if not _DIRECTION_BLOCK.fullmatch(b.strip()))
            yield "\n\n".join(p for p in map(_speech, blocks) if p)


_RST_DROP = re.compile(r"toctree|kernel-\w+|(literal)?include|image|figure|only|raw|index|contents|"
                       r"tabularcolumns|sectionauthor|c:namespace\S*|highlight|cssclass")
_RST_INLINE = [  # applied in order to a whole document; a span may wrap a line
    (re.compile(r":[\w:.+-]+:`([^`<]{0,200}?)\s*(?:<[^`>]{0,200}>)?`"), r"\1"),  # :role:`text <target>`
    (re.compile(r"`([^`<]{1,200}?)\s*<[^`>]{0,200}>`_{1,2}"), r"\1"),  # `text <url>`_
    (re.compile(r"``([^`]{1,200}?)``"), r"\1"),  # ``literal``
    (re.compile(r"(?<![`\w])`([^`\n]+)`_{0,2}"), r"\1"),  # `reference`_
    (re.compile(r"(?<![\w*])\*{1,2}([^*\s][^*\n]*?)\*{1,2}(?![\w*])"), r"\1"),  # *emphasis*, **strong**
    (re.compile(r"::$", re.M), ":"),  # literal-block marker
]


def _clean_rst(text: str) -> str:
    """Light RST stripping: heading rules, comments, labels, options and structural directives go.

    Literal blocks (code, shell sessions, tables) stay: they are part of the prose's meaning.
    """
    out: list[str] = []
    skip_indent: int | None = None
    for line in text.split("\n"):
        indent, stripped = len(line) - len(line.lstrip()), line.strip()
        if skip_indent is not None and (not stripped or indent > skip_indent):
            continue
        skip_indent = None
        if re.fullmatch(r"([=\-~^*#+`:.'\"_])\1+", stripped) or re.match(r":[\w -]+:(\s|$)", stripped):
            continue  # heading over/underline, field list or directive option
        if stripped.startswith(".."):
            directive = re.match(r"\.\.\s+([\w:-]+)::\s*(.*)", stripped)
            if directive is None or _RST_DROP.fullmatch(directive.group(1)):
                skip_indent = indent  # comment, label, substitution or dropped directive, with its body
                continue
            line = " " * indent + directive.group(2)  # note, warning, code-block...: keep argument and body
        out.append(line)
    text = "\n".join(out)
    for pattern, repl in _RST_INLINE:
        text = pattern.sub(repl, text)
    return text


def clean_linux_doc(members: Members) -> Iterator[str]:
    """One document per ``.rst`` outside ``translations/``; under 10 words it is an index page and goes.

    Every file is UTF-8 in 6.12.117; errors="replace" only keeps a future pin from failing.
    """
    for raw in members.values():
        doc = _clean_rst(gzip.decompress(raw).decode("utf-8", errors="replace"))
        if len(doc.split()) >= 10:
            yield doc
