"""A folder corpus names the files it skips (issue 13, item 14)."""

from __future__ import annotations

import logging

from mlpmem_lightning.data import corpora


def test_skipped_files_are_named_once(tmp_path):
    for name in ("a.txt", "B.TXT", "notes.md", "table.csv", "sub/c.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('{"text": "x"}\n' if name.endswith("jsonl") else "some text\n")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    corpora.log.addHandler(handler)
    try:
        files = corpora._local_files(tmp_path)
        corpora._local_files(tmp_path)
    finally:
        corpora.log.removeHandler(handler)
    assert [f.name for f in files] == ["a.txt", "c.jsonl"]
    assert len(seen) == 1 and all(n in seen[0] for n in ("B.TXT", "notes.md", "table.csv")) and "a.txt" not in seen[0]
