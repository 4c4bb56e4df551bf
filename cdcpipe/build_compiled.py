"""Builds capture's hot modules with mypyc into ``.build/compiled/`` (see :mod:`cdcpipe._compiled`):
``python -m cdcpipe.build_compiled [--check]``; ``--check`` only says whether the build is fresh (exit 1 if not)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from cdcpipe._compiled import BUILD_DIR, MODULES, SOURCE_ROOT, STAMP, expected_digests, interpreter_tag, status


def build(build_dir: Path = BUILD_DIR) -> None:
    """Compile :data:`MODULES` with mypyc in a scratch copy of the package and install the extensions, with
    their stamp, into ``build_dir`` (replaced as a whole; nothing is written inside the source tree)."""
    expected = expected_digests()
    with tempfile.TemporaryDirectory(prefix="cdcpipe-mypyc-") as tmp:
        work = Path(tmp)
        shutil.copytree(SOURCE_ROOT / "cdcpipe", work / "cdcpipe",
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        mypyc = Path(sys.executable).with_name("mypyc")
        subprocess.run([str(mypyc), *MODULES], cwd=work, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "MYPYC_OPT_LEVEL": "3"})
        build_dir.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=".compiled-", dir=build_dir.parent))
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        for lib in work.glob(f"*__mypyc{suffix}"):
            shutil.copy2(lib, staged / lib.name)
        for module in MODULES:
            ext = Path(module).with_suffix(suffix)
            (staged / ext).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(work / ext, staged / ext)
        (staged / STAMP).write_text(json.dumps({"interpreter": interpreter_tag(), "modules": expected}, indent=1))
    if build_dir.exists():
        shutil.rmtree(build_dir)
    staged.rename(build_dir)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        why = status()
        print(why or f"fresh: {BUILD_DIR}")
        return 0 if why is None else 1
    build()
    print(f"compiled {len(MODULES)} modules with mypyc into {BUILD_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
