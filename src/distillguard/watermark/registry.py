"""``SCHEMES``: the watermark schemes by name, listed without importing them.

Schemes live in ``watermark.schemes`` (which needs numpy and scipy); a third-party
package adds one under the ``distillguard.watermark_schemes`` entry-point group. The
settings check and ``--help`` read the names from here, so they import nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distillguard.registry import Registry

if TYPE_CHECKING:
    from distillguard.watermark.schemes import Scheme

SCHEMES: Registry[type[Scheme]] = Registry("watermark scheme",
                                           "distillguard.watermark_schemes")
SCHEMES.register_lazy("greenlist", "distillguard.watermark.schemes:GreenList")
SCHEMES.register_lazy("exponential", "distillguard.watermark.schemes:Exponential")
