"""What travels to the engines for each call: the function and its arguments, pickled once by cloudpickle.

Functions the engines can import (the kit, installed packages) travel by name; functions from notebooks, test
files and user scripts travel by value, also when passed as arguments (e.g. to an exercise check). torch's
config modules (a ModuleType subclass cloudpickle cannot pickle) travel by name. Used by `Workers.run`.
"""

from __future__ import annotations

import importlib
import io
import sys
import types

import cloudpickle

__all__ = ["check_sendable"]

def check_sendable(fn, args, kwargs) -> bytes:
    if not callable(fn):
        raise TypeError(f"launch needs a callable, got {type(fn).__name__}")
    # Functions (the one to run, or ones passed as arguments, e.g. to an exercise check) from test files or
    # user scripts that the engines cannot import travel by value.
    for f in (fn, *_callables_in(args), *_callables_in(tuple(kwargs.values()))):
        module = sys.modules.get(getattr(f, "__module__", None) or "")
        if module is not None and module.__name__ != "__main__" and not _importable_everywhere(module):
            cloudpickle.register_pickle_by_value(module)
    try:
        return _dumps((fn, args, kwargs))
    except Exception as e:
        raise TypeError(
            f"cannot send {getattr(fn, '__qualname__', fn)!r} and its arguments to the engines: {e}. "
            "Define the function at the top level of the notebook/module and pass plain data "
            "(no open files, locks, CUDA tensors or live process groups)."
        ) from e


def _callables_in(values: tuple) -> list:
    found = []
    for v in values:
        if isinstance(v, (list, tuple)):
            found += _callables_in(tuple(v))
        elif isinstance(v, dict):
            found += _callables_in(tuple(v.values()))
        elif callable(v) and hasattr(v, "__module__"):
            found.append(v)
    return found


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, plus: modules of a ModuleType subclass (torch's config modules, e.g.
    ``torch.distributed.config``, which cloudpickle finds when a function uses both ``dist`` and a name
    ``config``) travel by name like ordinary modules instead of failing to pickle; open files are refused
    (cloudpickle would send a copy of a read-mode file's contents, and writes on a rank would go nowhere)."""

    def reducer_override(self, obj):
        if isinstance(obj, io.IOBase) and not isinstance(obj, (io.BytesIO, io.StringIO)):
            raise TypeError(f"it refers to an open file ({getattr(obj, 'name', type(obj).__name__)!r}); pass "
                            "the path and open it inside the function")
        if isinstance(obj, types.ModuleType) and type(obj) is not types.ModuleType:
            name = getattr(obj, "__name__", None)
            if name and sys.modules.get(name) is obj:
                return importlib.import_module, (name,)
        return super().reducer_override(obj)


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
    return buf.getvalue()


def _importable_everywhere(module) -> bool:
    name = module.__name__.split(".")[0]
    if name == "hepml_kit":
        return True
    path = getattr(module, "__file__", None) or ""
    return "site-packages" in path or path.startswith(sys.base_prefix) or name in sys.builtin_module_names
