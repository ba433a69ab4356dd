"""One project error class (STYLE.md §9): every exception Hilum defines derives from HilumError.

Callers (the CLI, the workstation, protocol adapters) can then tell Hilum's own, expected errors
from programming errors with one ``except HilumError``; a class may also derive from the built-in
it stands for (``ValueError``, ``OSError``) so existing handlers keep working.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import hilum
from hilum.dicom.attributes import InvalidInstance
from hilum.errors import HilumError, RejectedInstance

SKIP = ("hilum.__main__", "hilum.archive.migrations")  # runs the CLI / needs Alembic's context


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(hilum.__path__, "hilum."):
        if not info.name.startswith(SKIP):
            names.append(info.name)
    return names


def test_every_exception_class_derives_from_hilum_error() -> None:
    strays = []
    seen = 0
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            # Private control-flow signals (``_Unusual``: "hand this file to pydicom") never
            # leave their module and are not errors.
            if cls.__module__ == name and issubclass(cls, BaseException) and not cls.__name__.startswith("_"):
                seen += 1
                if not issubclass(cls, HilumError):
                    strays.append(f"{name}.{cls.__qualname__}")
    assert seen >= 20  # the walk really found the project's errors
    assert strays == []


def test_a_rejected_instance_carries_its_code() -> None:
    exc = InvalidInstance("invalid-uid", "SOP Instance UID '../../x' is not a valid UID", "../../x")
    assert isinstance(exc, RejectedInstance) and isinstance(exc, ValueError)
    assert (exc.code, exc.reason, exc.sop_instance_uid) == ("invalid-uid", str(exc), "../../x")
