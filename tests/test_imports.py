"""The module structure: no import circles inside vae_zoo, and a model layer that stands alone.

Every ``import`` / ``from ... import`` of a vae_zoo module counts, those inside functions too
(a lazy import hides a circle from the interpreter, not from a reader).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vae_zoo"
#: what the models and everything they need may never import
MODEL_LAYER = "vae_zoo.models"
FORBIDDEN_FOR_MODELS = (
    "vae_zoo.cli",
    "vae_zoo.evaluation",
    "vae_zoo.sweep",
    "vae_zoo.checkpoints",
    "vae_zoo.runs",
    "vae_zoo.callbacks",
    "vae_zoo.loggers",
    "vae_zoo.data",
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The vae_zoo modules ``path`` imports, each resolved to the module it names."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_there_are_no_import_circles() -> None:
    graph = _graph()
    # a package importing its own submodules (to register or re-export them) is not a circle
    # unless the submodule imports the package back
    circles = sorted(
        f"{a} -> ... -> {a}"
        for a in graph
        if a in _closure(graph, a)
    )
    assert not circles, circles


@pytest.mark.parametrize("module", ["vae_zoo.models", "vae_zoo.metrics", "vae_zoo.distributions"])
def test_the_model_layer_imports_no_cli_evaluation_sweep_or_checkpoint_code(module: str) -> None:
    reached = _closure(_graph(), module)
    bad = sorted(m for m in reached if m.startswith(FORBIDDEN_FOR_MODELS))
    assert not bad, f"{module} reaches {bad}"


def test_the_import_walker_sees_lazy_imports_and_circles(tmp_path) -> None:
    """The checks above can fail: a lazy import that closes a circle is found."""
    pkg = tmp_path / "vae_zoo"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("from vae_zoo.models.base import Base\n")
    (pkg / "models" / "base.py").write_text(
        "def load():\n    from vae_zoo.checkpoints import read\n")
    (pkg / "checkpoints.py").write_text("from vae_zoo.models import Base\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        graph = _graph()
    finally:
        PACKAGE = saved
    assert "vae_zoo.checkpoints" in graph["vae_zoo.models.base"]
    assert "vae_zoo.models.base" in _closure(graph, "vae_zoo.models.base")
