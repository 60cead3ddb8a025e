"""The package boundaries of docs/ARCHITECTURE.md: which packages may import which.

No protocol imports a service and no service imports a protocol; what both need lives in
``socp_tw.transport``, which imports neither.  Every import statement counts, at any depth.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

SOURCES = Path(__file__).resolve().parent.parent.parent  # the directory holding socp_tw/


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names, as absolute names
    (``root`` is the directory the top-level package sits in)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def offenders(package: str, forbidden: tuple[str, ...], root: Path = SOURCES) -> list[str]:
    """``file: module`` for each import under ``package`` (dotted) of a ``forbidden`` package."""
    found = []
    for path in sorted(root.joinpath(*package.split(".")).rglob("*.py")):
        for name in sorted(imported_modules(path, root)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(root).as_posix()}: {name}")
    return found


class LayerTests(SynchronousTestCase):
    def test_no_protocol_imports_a_service(self) -> None:
        self.assertEqual(offenders("socp_tw.protocols", ("socp_tw.services",)), [])

    def test_no_service_imports_a_protocol(self) -> None:
        self.assertEqual(offenders("socp_tw.services", ("socp_tw.protocols",)), [])

    def test_transport_imports_neither(self) -> None:
        self.assertEqual(offenders("socp_tw.transport", ("socp_tw.services", "socp_tw.protocols")), [])

    def test_the_check_sees_imports_at_any_depth(self) -> None:
        """The checker itself, on a copy elsewhere: a nested and a relative import are both found."""
        root = Path(self.mktemp())
        (root / "socp_tw" / "protocols").mkdir(parents=True)
        (root / "socp_tw" / "protocols" / "probe.py").write_text(
            "import json\n\ndef f():\n"
            "    from socp_tw.services import hub\n"
            "    from ..services.mesh import Mesh\n",
            encoding="utf-8",
        )
        self.assertEqual(
            offenders("socp_tw.protocols", ("socp_tw.services",), root),
            [
                "socp_tw/protocols/probe.py: socp_tw.services",
                "socp_tw/protocols/probe.py: socp_tw.services.hub",
                "socp_tw/protocols/probe.py: socp_tw.services.mesh",
                "socp_tw/protocols/probe.py: socp_tw.services.mesh.Mesh",
            ],
        )
