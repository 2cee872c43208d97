"""The shape of the call pipeline: no import cycles, addons that stand alone, and adapters that
own every error their format can carry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from proxy import errors
from proxy.pipeline.hooks import ANSWER_HOOKS, OBSERVER_HOOKS, Addon, Hooks
from proxy.providers import ADAPTERS
from proxy.providers.base import ERROR_KINDS

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "proxy"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every proxy module a module imports anywhere: at the top, in functions, and for type
    checking only (a cycle there is still two modules that each need the other)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PROXY.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, modules) for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_module_of_proxy_imports_itself_back() -> None:
    assert _cycle(_graph()) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


CORE = {"proxy.server.forward", "proxy.server.intake", "proxy.server.upstream", "proxy.app"}


@pytest.mark.parametrize("path", sorted((PROXY / "addons").glob("*.py")), ids=lambda p: p.stem)
def test_an_addon_does_not_import_the_core(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not imported & CORE


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_adapter_names_every_problem_in_its_format(name: str) -> None:
    assert set(ADAPTERS[name].error_types) >= set(ERROR_KINDS)


def test_every_tripwire_error_is_a_problem_the_adapters_know() -> None:
    classes = [errors.TripwireError]
    while classes:
        cls = classes.pop()
        assert cls.kind in ERROR_KINDS, cls
        classes.extend(cls.__subclasses__())


def test_request_kinds_belong_to_one_format_each() -> None:
    kinds = [kind for adapter in ADAPTERS.values() for kind in adapter.kinds]
    assert len(kinds) == len(set(kinds))


def test_the_documented_hooks_are_the_dispatched_ones() -> None:
    documented = {name for name in vars(Addon) if not name.startswith("_") and name != "name"}
    assert documented == set(ANSWER_HOOKS) | set(OBSERVER_HOOKS)


def test_an_addon_is_only_called_for_the_hooks_it_has() -> None:
    class OnlyDone:
        def __init__(self) -> None:
            self.calls = 0

        def done(self, call: object) -> None:
            self.calls += 1

    addon = OnlyDone()
    hooks = Hooks([addon])
    assert hooks.request == hooks.reserved == hooks.completed == ()
    hooks.done(object())  # type: ignore[arg-type]
    assert addon.calls == 1
