"""Name -> class registries for methods and tasks, discovery of `methods/` and `tasks/`, plugins."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
import sys
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
        where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
        if not (isinstance(cls, type) and issubclass(cls, required)):
            raise HarnessError(f"{kind} {where} must subclass harness.contract.{base}")
        if not cls.name:
            raise HarnessError(f"{kind} {where} has no `name` (the name suites and --methods use)")
        if not dataclasses.is_dataclass(cls.Config):
            raise HarnessError(f"{kind} {where}: `Config` must be a dataclass of its options (got {cls.Config!r}); "
                               f"an option-less {kind} has `@dataclass class Config: pass`")
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
    """Import an outside module that registers methods or tasks: a module name importable from
    PYTHONPATH (`pkg.module`) or the path of a .py file. A module that registers nothing is an
    error (its classes lack @register_method / @register_task)."""
    path = Path(module_name)
    name = path.stem if path.suffix == ".py" else module_name
    if name in sys.modules:   # imported before (a worker re-importing, a test): registered then
        return
    discover()   # the shipped methods first: what the plugin adds is told apart, a name taken is named
    before = set(METHODS.items()) | set(TASKS.items())
    try:
        if path.suffix == ".py":
            if not path.is_file():
                raise HarnessError(f"plugin file {path} does not exist")
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(module_name)
    except HarnessError:
        sys.modules.pop(name, None)
        raise
    except ModuleNotFoundError as error:
        sys.modules.pop(name, None)
        if error.name and module_name.startswith(error.name):
            raise HarnessError(f"cannot import plugin {module_name!r}: no module {error.name!r} on the Python path; "
                               f"add its folder to PYTHONPATH, or pass the file (--plugin path/to/{name}.py)") from None
        raise HarnessError(f"cannot import plugin {module_name!r}: ModuleNotFoundError: {error}") from None
    except Exception as error:   # a plugin may fail at import in any way: one line, not a traceback
        sys.modules.pop(name, None)
        first = (str(error).strip().splitlines() or [""])[0]
        raise HarnessError(f"cannot import plugin {module_name!r}: {type(error).__name__}: {first}") from None
    if before == set(METHODS.items()) | set(TASKS.items()):
        raise HarnessError(f"plugin {module_name!r} registered no method or task: decorate its class with "
                           f"@register_method or @register_task (from harness.registry)")


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
