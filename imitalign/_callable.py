"""Packages that can be called: ``imitalign.train(cfg)`` and ``imitalign.generate(...)``.

``from imitalign import train`` must give the training function, yet ``imitalign.train`` is also the package of the
training loop — and Python's import system sets ``imitalign.train`` to that package as soon as any of its
modules is imported, which would hide a function of the same name. So the package itself is made callable: it
forwards a call to the function it names, importing that function's module only then (``import imitalign``
stays cheap), and everything else (``imitalign.train.loop``, ...) stays as it was.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class CallablePackage(types.ModuleType):
    """A package whose call runs ``<__call_module__>.<__call_name__>``."""

    __call_module__: str
    __call_name__: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.__call_module__), self.__call_name__)(*args, **kwargs)


def make_callable(package: str, module: str, name: str) -> None:
    """Make the (imported) ``package`` call ``module.name``."""
    pkg = sys.modules[package]
    pkg.__class__ = CallablePackage
    pkg.__call_module__ = module
    pkg.__call_name__ = name
