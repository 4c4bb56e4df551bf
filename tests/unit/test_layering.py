"""The package's layers: capture and apply depend only on the core, never on each other; the product never
depends on the demo; ``reconcile`` (a tool over a running pipeline) may use apply's storage format and the
snapshot, never capture; ``dlq`` may use apply and capture (it reads capture's dead letters again); no side uses a
tool.  Read from the source (every ``import``, also those inside
functions), so a lazy import cannot slip through, and checked once more on ``sys.modules`` of a fresh
interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cdcpipe"
SIDES = ("capture", "apply", "snapshot")
ENTRY_POINTS = frozenset({"cdcpipe.cli", "cdcpipe.__main__"})  # the command line wires every part together


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path) -> set[str]:
    """Every ``cdcpipe`` module ``path`` imports, relative imports resolved, ``from X import y`` as ``X.y``."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == root.name or m.startswith(root.name + ".")}


# a tool over the sides: the sides it may use
TOOLS = {"reconcile": ("apply", "snapshot"), "dlq": ("apply", "capture")}


def layer(module: str) -> str:
    """``core``, a side (``capture``, ``apply``, ``snapshot``), a tool (``reconcile``), ``demo`` or ``entry``."""
    if module in ENTRY_POINTS:
        return "entry"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in (*SIDES, *TOOLS, "demo"):
        return parts[1]
    return "core"


def violations(root: Path) -> list[str]:
    """Each import that breaks a rule: the core imports no side and no demo; a side imports only the core and
    itself; a tool only the core, itself and its sides; only the demo itself and the entry points import the demo
    (or a tool)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        src = module_name(root, path).replace(root.name, "cdcpipe", 1)
        for target in sorted(imports(root, path)):
            target = target.replace(root.name, "cdcpipe", 1)
            have, want = layer(src), layer(target)
            if want in ("core", have) or have in ("entry", "demo") or want in TOOLS.get(have, ()):
                continue
            found.append(f"{src} ({have}) imports {target} ({want})")
    return found


def test_capture_and_apply_depend_only_on_the_core() -> None:
    assert violations(PACKAGE) == []


def write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(("rel", "text", "expected"), [
    ("apply/writer.py", "from cdcpipe.capture.segment import Position\n", "cdcpipe.apply.writer (apply) imports"),
    ("apply/writer.py", "def f():\n    from ..capture import segment\n", "cdcpipe.apply.writer (apply) imports"),
    ("capture/batches.py", "import cdcpipe.apply.merge\n", "cdcpipe.capture.batches (capture) imports"),
    ("typemap.py", "from cdcpipe.capture import rows\n", "cdcpipe.typemap (core) imports"),
    ("apply/view.py", "from cdcpipe.demo import fidelity\n", "cdcpipe.apply.view (apply) imports"),
    ("reconcile/compare.py", "from cdcpipe.capture import segment\n", "cdcpipe.reconcile.compare (reconcile) imports"),
    ("apply/writer.py", "from cdcpipe.reconcile import compare\n", "cdcpipe.apply.writer (apply) imports"),
])
def test_the_check_catches_a_wrong_import(tmp_path: Path, rel: str, text: str, expected: str) -> None:
    root = tmp_path / "cdcpipe"
    for init in ("__init__.py", "capture/__init__.py", "apply/__init__.py", "demo/__init__.py"):
        write(root, init)
    write(root, "capture/segment.py")
    write(root, "typemap.py", "from cdcpipe.cql import CqlType\n")
    assert violations(root) == []
    write(root, rel, text)
    assert [v for v in violations(root) if v.startswith(expected)], violations(root)


@pytest.mark.parametrize(("module", "forbidden"), [
    ("cdcpipe.apply.pipeline", ("cdcpipe.capture", "cdcpipe.demo")),
    ("cdcpipe.capture.pipeline", ("cdcpipe.apply", "cdcpipe.demo")),
    ("cdcpipe.cli", ("cdcpipe.capture", "cdcpipe.apply", "cdcpipe.demo.")),
])
def test_importing_one_side_loads_nothing_of_the_other(module: str, forbidden: tuple[str, ...]) -> None:
    code = (f"import sys, {module}; "
            f"print('\\n'.join(m for m in sys.modules if m.startswith({forbidden!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == []


def test_rich_is_used_only_by_the_demo_and_status() -> None:
    """``rich`` is the optional extra ``console``: the processes run without it."""
    users = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "rich" or n.startswith("rich.") for n in names):
                users.add(module_name(PACKAGE, path))
    assert users <= {"cdcpipe.status", "cdcpipe.demo.view"}, users
