"""Audit any optimizer's updates for silent Muon failures (uses the spectra watch).

``muonscope.audit(model, optimizer, batches, ...)`` calls :func:`muonscope.audit.run.audit`: the
package itself is callable, so the name works whether or not the subpackage was imported first.
"""

import sys
import types

from muonscope._lazy import lazy_getattr

_LAZY = {name: "muonscope.audit.run" for name in ("audit", "AuditReport", "Finding", "KINDS", "default_loss")}

__getattr__ = lazy_getattr(__name__, _LAZY)


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from muonscope.audit.run import audit

        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
