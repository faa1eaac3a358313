"""Every module of eventlib says which of its names are its API: it defines
``__all__``, naming only what it defines or imports, or else every name it
defines starts with an underscore."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import eventlib

PACKAGE = Path(eventlib.__file__).parent
MODULES = sorted(path.relative_to(PACKAGE.parent) for path in PACKAGE.rglob("*.py"))


def top_level_names(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level (``if`` blocks included)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return None


def defined_names(tree: ast.Module) -> list[str]:
    """The functions, classes and variables the module defines itself."""
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names.extend(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


@pytest.mark.parametrize("module", MODULES, ids=str)
def test_a_module_names_its_api(module):
    tree = ast.parse((PACKAGE.parent / module).read_text())
    names = declared_all(tree)
    if names is None:
        public = [name for name in defined_names(tree) if not name.startswith("_")]
        assert public == [], f"{module} has no __all__ and defines {public}"
    else:
        missing = sorted(set(names) - top_level_names(tree))
        assert missing == [], f"{module}'s __all__ names what it does not define: {missing}"
