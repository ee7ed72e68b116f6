"""Reading JSON files with a typed error that names the file; writing them atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_json(path: Path, error: type[Exception], *, missing: str):
    """Parsed content of ``path``; ``error(missing)`` if it is absent, ``error`` naming it if malformed."""
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc


def write_json(path, data, *, indent: int | None = 1, allow_nan: bool = True) -> Path:
    """Write ``data`` as JSON atomically: a temporary file beside ``path``, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        tmp.write_text(json.dumps(data, indent=indent, allow_nan=allow_nan))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
