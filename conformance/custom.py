"""Bring your own target: ``--target python:MODULE:FACTORY``.

`MODULE` is an importable module name (the working directory is searched too) or the path
of a ``.py`` file; `FACTORY` names a callable in it, called with no arguments, or with
``profile=`` (the ``--profile`` value, or None) when it has a parameter of that name.  It
returns the card: any object with

- ``transmit(command: bytes) -> bytes`` (the response APDU, data and status word),
- ``reset() -> bytes`` (a warm reset; the ATR),
- ``power_cycle() -> bytes | None`` (a cold reset; the ATR, or None if it cannot),

and optionally ``restart()`` (back to the card's initial state), ``close()``, a ``name``
and a ``disposable`` flag.  Only an object that says ``disposable = True`` (its state may be
thrown away, wrong PINs may block it) is driven without the PIN guard, and it must have
``restart()``: the bench starts examples on a card in its initial state.

Every problem in loading it is a `TargetError` of one line.  An exception raised by the
object while the bench drives it is a `TargetError` too (the target failed, as a reader that
goes away does).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from .targets import TargetError

REQUIRED = ("transmit", "reset", "power_cycle")
USAGE = "expected python:MODULE:FACTORY (MODULE a module name or a .py file)"


def _describe(error: BaseException) -> str:
    """``Type: message (file.py:LINE)``, the line being the innermost one outside the bench."""
    if isinstance(error, SyntaxError):
        where = f" ({Path(error.filename or '?').name}:{error.lineno})"
        return f"SyntaxError: {error.msg}{where}"
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if Path(frame.filename).resolve() != Path(__file__).resolve()
    ]
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def _is_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


def _import_file(path: Path, spec: str) -> ModuleType:
    if not path.is_file():
        raise TargetError(f"{spec}: no file {path}")
    resolved = path.resolve()
    name = f"mynacard_target_{resolved.stem}_{hashlib.sha1(bytes(resolved)).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise TargetError(f"{spec}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.append(folder)  # its neighbours can be imported, as a script's can
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise TargetError(f"{spec}: importing {path} failed: {_describe(error)}") from None
    return module


def _import_name(module: str, spec: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)  # as `python -m` would find it; installed modules come first
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise TargetError(f"{spec}: no module named {module!r} (a name on sys.path or a .py file)")
    try:
        return importlib.import_module(module)
    except Exception as error:
        raise TargetError(f"{spec}: importing {module} failed: {_describe(error)}") from None


def _takes_profile(factory: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == "profile" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in parameters
    )


def _call(factory: Callable[..., Any], profile: str | None, spec: str, label: str) -> Any:
    try:
        return factory(profile=profile) if _takes_profile(factory) else factory()
    except Exception as error:
        raise TargetError(f"{spec}: {label}() raised {_describe(error)}") from None


def python_target(argument: str, profile: str | None = None) -> PythonTarget:
    """The target `argument` (``MODULE:FACTORY``) makes; TargetError if it cannot."""
    spec = f"python:{argument}"
    module_name, sep, label = argument.rpartition(":")
    if not sep or not module_name or not label.isidentifier():
        raise TargetError(f"{spec}: {USAGE}")
    if _is_path(module_name):
        module = _import_file(Path(module_name), spec)
    else:
        module = _import_name(module_name, spec)
    factory = getattr(module, label, None)
    if factory is None:
        raise TargetError(f"{spec}: {module_name} has no {label!r}")
    if not callable(factory):
        kind = type(factory).__name__
        article = "an" if kind[0] in "aeiou" else "a"
        raise TargetError(f"{spec}: {label} is not callable (it is {article} {kind})")
    card = _call(factory, profile, spec, label)
    missing = [name for name in REQUIRED if not callable(getattr(card, name, None))]
    if missing:
        raise TargetError(
            f"{spec}: the {type(card).__name__} from {label}() has no "
            f"{', '.join(f'{name}()' for name in missing)} "
            f"(a target needs {', '.join(f'{name}()' for name in REQUIRED)})"
        )
    target = PythonTarget(card, spec)
    if target.disposable and not callable(getattr(card, "restart", None)):
        raise TargetError(
            f"{spec}: the {type(card).__name__} says it is disposable but has no restart() "
            "to go back to its initial state"
        )
    return target


class PythonTarget:
    """A user's object as a `Target`: answers checked for type, exceptions as TargetError."""

    def __init__(self, card: Any, spec: str) -> None:
        self.card = card
        self.name = str(getattr(card, "name", None) or spec)
        self.disposable = getattr(card, "disposable", False) is True

    def _do(self, method: str, *args: bytes) -> Any:
        try:
            return getattr(self.card, method)(*args)
        except Exception as error:
            raise TargetError(f"{self.name}: {method}() raised {_describe(error)}") from None

    def _bytes(self, method: str, answer: Any) -> bytes:
        if not isinstance(answer, bytes | bytearray | memoryview):
            raise TargetError(
                f"{self.name}: {method}() returned {type(answer).__name__}, not bytes"
            )
        return bytes(answer)

    def transmit(self, command: bytes) -> bytes:
        return self._bytes("transmit", self._do("transmit", command))

    def reset(self) -> bytes:
        return self._bytes("reset", self._do("reset"))

    def power_cycle(self) -> bytes | None:
        answer = self._do("power_cycle")
        return None if answer is None else self._bytes("power_cycle", answer)

    def fresh(self) -> None:
        """A disposable card restarts in its initial state; any other is only reset."""
        if self.disposable:
            self._do("restart")
        else:
            self.reset()

    def close(self) -> None:
        if callable(getattr(self.card, "close", None)):
            self._do("close")
