"""Test and benchmark helpers that ship with the package (a fake OpenAI upstream)."""

from __future__ import annotations

from typing import Any

__all__ = ["FakeUpstream", "FakeUpstreamProcess"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that ``python -m distillguard.testing.fake_upstream``
    # does not find its own module already imported by this package.
    if name in __all__:
        from distillguard.testing import fake_upstream

        return getattr(fake_upstream, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
