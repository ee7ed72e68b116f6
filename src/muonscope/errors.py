"""Typed exceptions. Every error a user can cause derives from :class:`MuonscopeError`.

The CLI turns any of them into one line on stderr and exit code 2.
"""


class MuonscopeError(Exception):
    """Base class for errors caused by bad input or configuration."""


class ScheduleError(MuonscopeError, ValueError):
    """An invalid or unknown Newton-Schulz schedule."""


class ShapeError(MuonscopeError, ValueError):
    """A tensor has a shape the operation cannot accept."""


class NonFiniteError(MuonscopeError, FloatingPointError):
    """A gradient or buffer contains NaN or Inf."""


class ConfigError(MuonscopeError, ValueError):
    """A malformed configuration, plan or argument."""


class StoreError(MuonscopeError, OSError):
    """A run store is missing, corrupt or foreign."""


class FitError(MuonscopeError, ValueError):
    """Data cannot support the requested fit (too few sizes, non-positive values, NaNs)."""


class ParamTypeError(ConfigError, TypeError):
    """Parameters given in a form an optimizer cannot take (e.g. one tensor instead of an iterable)."""


class UnsupportedParamError(MuonscopeError, RuntimeError):
    """A parameter the optimizer cannot update (complex dtype), found when stepping (as torch does)."""


class DistributedMismatchError(ConfigError):
    """Ranks of one process group built the optimizer over different parameters (names, shapes,
    dtypes, views or grouping); raised with the same message on every rank."""


class StateDictMismatchError(ConfigError):
    """A saved optimizer state does not fit this optimizer's parameters (names, shapes, groups)."""
