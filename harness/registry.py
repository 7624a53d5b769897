"""Name -> class registries for methods and tasks, discovery of `methods/` and `tasks/`, plugins."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from harness.errors import HarnessError, choices_error

METHODS: dict[str, type] = {}
TASKS: dict[str, type] = {}
SUITE_DIR = Path(__file__).parent / "suites"
_discovered = False


def _register(table: dict, kind: str, base: str):
    def decorator(cls):
        from harness import contract
        required = getattr(contract, base)
        if not (isinstance(cls, type) and issubclass(cls, required)):
            raise TypeError(f"{kind} {getattr(cls, '__name__', cls)!r} must subclass harness.contract.{base}")
        if not cls.name:
            raise TypeError(f"{kind} class {cls.__name__} has no name")
        if cls.name in table and table[cls.name] is not cls:
            existing = table[cls.name]
            if (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
                raise HarnessError(f"{kind} name {cls.name!r} is taken twice: by {existing.__module__}."
                                   f"{existing.__qualname__} and by {cls.__module__}.{cls.__qualname__}; "
                                   f"give one of them another `name`")
        table[cls.name] = cls
        return cls
    return decorator


register_method = _register(METHODS, "method", "Method")
register_task = _register(TASKS, "task", "Task")


def discover() -> None:
    """Import every module of the `methods` and `tasks` packages (each registers itself)."""
    global _discovered
    if _discovered:
        return
    for package_name in ("methods", "tasks"):
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package_name}.{info.name}")
    _discovered = True


def load_plugin(module_name: str) -> None:
    """Import an outside module that registers methods or tasks."""
    try:
        importlib.import_module(module_name)
    except Exception as error:   # a plugin may fail at import in any way: one line, not a traceback
        first = (str(error).strip().splitlines() or [""])[0]
        raise HarnessError(f"cannot import plugin {module_name!r}: {type(error).__name__}: {first}") from None


def get_method(name: str) -> type:
    discover()
    if name not in METHODS:
        raise choices_error("method", name, METHODS)
    return METHODS[name]


def get_task(name: str) -> type:
    discover()
    if name not in TASKS:
        raise choices_error("task", name, TASKS)
    return TASKS[name]


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def suite_path(name: str) -> Path:
    path = SUITE_DIR / f"{name}.yaml"
    if not path.exists():
        candidate = Path(name)
        if candidate.suffix in (".yaml", ".yml") and candidate.exists():
            return candidate
        raise choices_error("suite", name, suite_names())
    return path
