"""The command line is its own package: the library imports nothing from ``clustr_fast.cli``."""
import ast
import pathlib
import subprocess
import sys

import pytest

import clustr_fast

PACKAGE = pathlib.Path(clustr_fast.__file__).parent
LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts[:1])


def _module_name(path: pathlib.Path) -> list:
    parts = ["clustr_fast", *path.relative_to(PACKAGE).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(path: pathlib.Path) -> set:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_scan_sees_relative_and_absolute_imports():
    names = imported_modules(PACKAGE / "cli" / "train.py")
    assert "clustr_fast.train.fit" in names and "clustr_fast.cli.errors" in names


def test_library_modules_are_found():
    parts = {p.relative_to(PACKAGE).parts[0] for p in LIBRARY}
    assert {"train", "robust", "data", "demo.py"} <= parts


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_imports_nothing_from_the_cli(path):
    bad = sorted(n for n in imported_modules(path) if n == "clustr_fast.cli" or n.startswith("clustr_fast.cli."))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "clustr_fast.cli", "--help"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for command in ("train", "eval", "certify", "demo", "bench"):
        assert command in out.stdout
