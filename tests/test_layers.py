"""The package's modules import downward only: no import cycle, and no package import hidden inside a function."""
import ast
import graphlib
from pathlib import Path

import ssl_lessons

PACKAGE = Path(ssl_lessons.__file__).parent


def module_name(path: Path) -> str:
    parts = ("ssl_lessons",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_imports(name: str) -> list[tuple[str, bool]]:
    """[(imported package module, at top level?)] of module `name`, read from its source."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out += [(t, node in tree.body) for t in targets if t in MODULES]
    return out


def test_the_import_graph_reader_sees_relative_and_submodule_imports():
    found = dict(package_imports("ssl_lessons.methods.dino"))
    assert found["ssl_lessons.losses.dino"] and found["ssl_lessons.methods.base"] and found["ssl_lessons.heads"]
    assert "ssl_lessons.streaming" in dict(package_imports("ssl_lessons.data"))
    assert "ssl_lessons.distributed" in dict(package_imports("ssl_lessons.checkpoint"))  # `from . import distributed`


def test_no_import_cycle_among_the_modules():
    graph = {name: {t for t, _ in package_imports(name) if t != name} for name in MODULES}
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"an import cycle: {' imports '.join(reversed(e.args[1]))}") from None
    assert set(order) == set(MODULES)


def test_no_package_import_inside_a_function():
    inner = {name: sorted(t for t, top in package_imports(name) if not top) for name in MODULES}
    assert {name: found for name, found in inner.items() if found} == {}
