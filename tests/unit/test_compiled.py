"""The mypyc build of capture's hot modules is used only while it matches the sources (cdcpipe/_compiled.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cdcpipe import _compiled
from cdcpipe._compiled import MODULES, status


def stamp(build: Path, **overrides: object) -> None:
    build.mkdir(parents=True, exist_ok=True)
    content = {"interpreter": _compiled.interpreter_tag(), "modules": _compiled.expected_digests(), **overrides}
    (build / "stamp.json").write_text(json.dumps(content))


def test_missing_build(tmp_path: Path) -> None:
    assert status(tmp_path / "none") == f"no compiled build in {tmp_path / 'none'}"


def test_fresh_stamp(tmp_path: Path) -> None:
    stamp(tmp_path)
    assert status(tmp_path) is None


def test_a_changed_source_makes_the_build_stale(tmp_path: Path) -> None:
    modules = _compiled.expected_digests()
    modules[MODULES[1]] = "0" * 64
    stamp(tmp_path, modules=modules)
    assert status(tmp_path) == f"stale: {MODULES[1]} changed since the build"


def test_another_interpreter(tmp_path: Path) -> None:
    stamp(tmp_path, interpreter="cpython-399.so")
    assert (status(tmp_path) or "").startswith("built for cpython-399.so")


def _origin(mode: str) -> str:
    code = "import cdcpipe.capture.encoder as m, cdcpipe.capture.segment as s; print(m.__file__, s.__file__)"
    env = {**os.environ, "CDCPIPE_COMPILED": mode}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_modes_select_the_modules() -> None:
    """``make install`` builds it, so here the build is fresh: ``require`` loads the extensions (framing stays
    pure), ``off`` the sources."""
    compiled, pure = _origin("require").split(), _origin("off").split()
    assert compiled[0].endswith(".so") and compiled[0].startswith(str(_compiled.BUILD_DIR)), compiled
    assert compiled[1].endswith("segment.py"), compiled
    assert all(p.endswith(".py") for p in pure), pure


def test_unknown_mode_is_refused() -> None:
    env = {**os.environ, "CDCPIPE_COMPILED": "yes"}
    done = subprocess.run([sys.executable, "-c", "import cdcpipe"], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "CDCPIPE_COMPILED='yes'" in done.stderr
