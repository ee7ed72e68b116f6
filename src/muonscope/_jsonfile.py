"""Reading JSON files with a typed error that names the file; writing them atomically."""

from __future__ import annotations

import json
from pathlib import Path

from muonscope._atomic import atomic_write


def read_json(path: Path, error: type[Exception], *, missing: str):
    """Parsed content of ``path``; ``error(missing)`` if it is absent, ``error`` naming it if malformed."""
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc


def write_json(path, data, *, indent: int | None = 1, allow_nan: bool = True) -> Path:
    """Write ``data`` as JSON with :func:`muonscope._atomic.atomic_write` (unique temporary file,
    fsync, rename; nothing left behind on failure; non-regular targets refused)."""
    from muonscope.errors import ConfigError

    try:
        text = json.dumps(data, indent=indent, allow_nan=allow_nan)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot write {path}: content is not JSON-serializable ({exc})") from exc
    return atomic_write(Path(path), text)
