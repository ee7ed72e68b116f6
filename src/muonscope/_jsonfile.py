"""Reading JSON files with a typed error that names the file."""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: Path, error: type[Exception], *, missing: str):
    """Parsed content of ``path``; ``error(missing)`` if it is absent, ``error`` naming it if malformed."""
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc
