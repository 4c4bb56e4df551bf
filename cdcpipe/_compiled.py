"""Optional mypyc builds of the per-event modules of capture and apply, used only while they match the sources.

``python -m cdcpipe.build_compiled`` (run by ``make install``) compiles :data:`MODULES` with mypyc, outside the
source tree, into ``.build/compiled/`` beside the package, with a stamp holding the SHA-256 of each compiled
source.  :func:`activate` (called when :mod:`cdcpipe` is imported) puts that folder in front of the package's
search path only if every stamped hash still equals its source file: an edited module switches the whole group
back to the pure-Python sources, never to a stale build.  The pure sources stay the reference: both run the same
code, and ``CDCPIPE_COMPILED`` selects ``auto`` (default: compiled when fresh), ``off`` (``make test`` runs
the unit tests once this way) or ``require`` (fail when the build is missing or stale).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

#: Capture's per-event path and apply's reader, merge rules, stored-state format, view and binary COPY writer.
#: Framing stays pure (its slot-setting trick is faster there than a compiled dataclass constructor), so do the
#: value codecs (a subclass of ``int`` that mypyc cannot compile natively).  Apply's per-event values (merge's
#: ``Version``, ``RowState``…) are written by hand, not as dataclasses, so that building one is a native call.
MODULES = ("cdcpipe/capture/avro_write.py", "cdcpipe/capture/encoder.py", "cdcpipe/capture/rows.py",
           "cdcpipe/capture/mutation.py", "cdcpipe/capture/batches.py",
           "cdcpipe/apply/avro_skip.py", "cdcpipe/apply/avro_read.py", "cdcpipe/apply/state.py",
           "cdcpipe/apply/view.py", "cdcpipe/apply/pgbinary.py", "cdcpipe/apply/merge.py",
           "cdcpipe/apply/keys.py")

SOURCE_ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = SOURCE_ROOT / ".build" / "compiled"
STAMP = "stamp.json"
_active = False  # set by activate(): the build is fresh and wanted


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_digests() -> dict[str, str]:
    return {m: _digest(SOURCE_ROOT / m) for m in MODULES}


def interpreter_tag() -> str:
    return f"{sys.implementation.cache_tag}{sysconfig.get_config_var('EXT_SUFFIX')}"


def status(build_dir: Path = BUILD_DIR) -> str | None:
    """None when ``build_dir`` holds a build of the current sources for this interpreter, else why not."""
    try:
        stamp = json.loads((build_dir / STAMP).read_text())
    except (OSError, ValueError):
        return f"no compiled build in {build_dir}"
    if stamp.get("interpreter") != interpreter_tag():
        return f"built for {stamp.get('interpreter')}, running {interpreter_tag()}"
    try:
        stale = [m for m, h in expected_digests().items() if stamp.get("modules", {}).get(m) != h]
    except OSError as exc:  # an installed package without its sources beside it
        return f"sources unreadable: {exc}"
    return f"stale: {', '.join(stale)} changed since the build" if stale else None


def activate() -> bool:
    """Make the compiled modules importable if the build is fresh (see the module docstring); True when it did.
    Must run before any of :data:`MODULES` is imported.  Raises RuntimeError under ``CDCPIPE_COMPILED=require``
    when the build is missing or stale."""
    mode = os.environ.get("CDCPIPE_COMPILED", "auto")
    if mode not in ("auto", "off", "require"):
        raise RuntimeError(f"CDCPIPE_COMPILED={mode!r}: expected auto, off or require")
    if mode == "off":
        return False
    why = status()
    if why is not None:
        if mode == "require":
            raise RuntimeError(f"CDCPIPE_COMPILED=require: {why} (run: python -m cdcpipe.build_compiled)")
        return False
    global _active
    sys.path.insert(0, str(BUILD_DIR))  # mypyc's shared library is a top-level module
    _active = True
    import cdcpipe

    extend_path(cdcpipe.__path__, "cdcpipe")
    return True


def extend_path(path: list[str], package: str) -> None:
    """Put the build's folder of ``package`` in front of its search ``path`` when :func:`activate` found a fresh
    build and that package has compiled modules.  Each package calls it from its ``__init__`` (so importing one
    side never imports the other)."""
    folder = BUILD_DIR.joinpath(*package.split("."))
    if _active and any(m.startswith(package.replace(".", "/") + "/") and m.count("/") == package.count(".") + 1
                       for m in MODULES):
        path.insert(0, str(folder))
