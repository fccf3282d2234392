"""The house rules, checked on the source: public Dagster APIs only, domain code free of Dagster,
no private helper imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skyassets"
DOMAINS = ("archive", "fits", "landing", "lake", "catalog", "imaging", "tiles", "emulator")
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append((base, [alias.name for alias in node.names]))
    return found


def test_the_package_has_modules_to_check():
    assert len(SOURCES) > 40 and all(d in {p.parent.name for p in SOURCES} for d in DOMAINS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_dagster_import(path: Path):
    private = [m for m, _ in _imports(path) if m.split(".")[0].startswith("dagster") and "._" in f".{m}"]
    assert not private, f"{path} imports Dagster's private modules {private}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_hand_written_dagster_tag_outside_the_tags_module(path: Path):
    if path == PACKAGE / "defs" / "tags.py":
        return
    literals = [
        n.value for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("dagster/")
        and n.value not in ("dagster/row_count", "dagster/column_schema")  # metadata keys, set through values
    ]
    assert not literals, f"{path} writes Dagster tags by hand: {literals}; declare them in skyassets/defs/tags.py"


DOMAIN_SOURCES = [p for p in SOURCES if p.relative_to(PACKAGE).parts[0] in DOMAINS]
OUTSIDE_DOMAINS = ("dagster", "dagster_aws", "skyassets.defs", "skyassets.definitions", "skyassets.cli")


@pytest.mark.parametrize("path", DOMAIN_SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_domain_code_knows_nothing_of_dagster(path: Path):
    wrong = [m for m, _ in _imports(path) if any(m == o or m.startswith(f"{o}.") for o in OUTSIDE_DOMAINS)]
    assert not wrong, f"{path} imports {wrong}: domain subpackages stay plain Python"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_imported_across_modules(path: Path):
    private = [
        f"{module}.{name}" for module, names in _imports(path) if module.startswith("skyassets")
        for name in names if name.startswith("_") and not name.startswith("__")
    ]
    assert not private, f"{path} imports private names {private}: make them public where they are owned"
