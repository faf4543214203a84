"""``mlpmem fit|validate|test --help`` from a cache: LightningCLI builds its help by importing Lightning, torch and
transformers (about 15 s on a 2-core machine), although the text depends only on the package's code and the
arguments. The first call builds it and stores it under the cache directory, keyed by the arguments and by the size
and modification time of every source file of the package (an edit makes a new key); later calls print it without
importing any of them. Nothing else is cached: only argument lists that ask for help and nothing more.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
HELP_FLAGS = ("-h", "--help")


def asks_for_help(argv: Sequence[str]) -> bool:
    """Help and nothing that runs: the command, ``--help``, and at most ``--model X`` (whose help differs)."""
    rest = [a for a in argv[1:] if a not in HELP_FLAGS]
    plain = not rest or (len(rest) == 2 and rest[0] == "--model") or (len(rest) == 1 and rest[0].startswith("--model="))
    return any(a in HELP_FLAGS for a in argv[1:]) and plain


def _key(argv: Sequence[str]) -> str:
    h = hashlib.sha256("\0".join(argv).encode())
    for path in sorted(PACKAGE.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(PACKAGE)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _cache_dir() -> Path:
    base = os.environ.get("MLPMEM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlpmem"
    return Path(base).expanduser() / "help"


def cached_help(argv: Sequence[str], build: Callable[[], None]) -> str:
    """The help text of ``argv``: read from the cache, or printed by ``build()`` (which exits) and stored."""
    path = _cache_dir() / f"{argv[0]}-{_key(argv)}.txt"
    if path.is_file():
        return path.read_text()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build()
    text = out.getvalue()
    with contextlib.suppress(OSError):  # a read-only cache only costs speed
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return text
