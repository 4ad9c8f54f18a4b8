"""distillguard: a gateway that defends a model API against distillation.

Nothing is imported here, so that ``import distillguard`` (and ``distillguard --help``)
stays cheap. ``__version__`` is the installed distribution's version, read from the
package metadata when first asked for (``importlib.metadata`` alone costs ~0.1 s).
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib import metadata

        try:
            version = metadata.version("distillguard")
        except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
            version = "0+unknown"
        globals()["__version__"] = version
        return version
    raise AttributeError(f"module 'distillguard' has no attribute {name!r}")
