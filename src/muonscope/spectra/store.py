"""Run store: the interface between training and analysis.

A run is a directory::

    run.json                      config, model size, versions, seed, schema version
    spectra/part-g{G}-r{R}-{N}.parquet   spectral records (one row per matrix per sampled step)
    metrics/part-g{G}-r{R}-{N}.parquet   scalar metrics in long form (run_id, step, name, value)

Rows are buffered and flushed every ``flush_rows`` rows or ``flush_seconds`` seconds. Each part is
written under a temporary name, fsynced and renamed, so a process killed at any point leaves only
complete parts (it loses at most the unflushed buffer). Every opening for writing starts a new
generation G; readers keep, for each (step, param, source) in ``spectra`` and (step, name) in
``metrics``, the row of the newest generation, so a run resumed from a checkpoint appends without
duplicates. Each process rank R writes its own parts; nothing is gathered.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from muonscope import validate
from muonscope._atomic import atomic_write, ensure_dir, os_error
from muonscope._jsonfile import read_json
from muonscope.errors import ConfigError, StoreError

FORMAT = "muonscope.run"
SCHEMA_VERSION = 1
TABLES = ("spectra", "metrics")
_PART = re.compile(r"^part-g(\d+)-r(\d+)-(\d+)\.parquet$")
_KEYS = {"spectra": ["step", "param", "source"], "metrics": ["step", "name"]}
_TYPES = {
    "run_id": pa.string(), "step": pa.int64(), "param": pa.string(), "layer_type": pa.string(),
    "block": pa.int64(), "rel_depth": pa.float64(), "rows": pa.int64(), "cols": pa.int64(), "expert": pa.int64(),
    "model_params": pa.int64(), "ns_schedule": pa.string(), "ns_steps": pa.int64(),
    "source": pa.string(), "process_rank": pa.int64(), "name": pa.string(), "value": pa.float64(),
    "spectrum": pa.list_(pa.float64()),
}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("muonscope", "torch", "numpy", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, data, what="run store file")


def _to_table(rows: Sequence[dict]) -> pa.Table:
    table = pa.Table.from_pylist(list(rows))
    fields = []
    for f in table.schema:
        if f.name in _TYPES:
            fields.append(pa.field(f.name, _TYPES[f.name]))
        elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_null(f.type):
            fields.append(pa.field(f.name, pa.float64()))
        else:
            fields.append(f)
    return table.cast(pa.schema(fields))


class RunStore:
    """A run directory: ``run.json`` plus Parquet parts of spectral records and metrics."""

    def __init__(self, path: Path, meta: dict, *, writable: bool, process_rank: int = 0,
                 flush_rows: int = 512, flush_seconds: float = 30.0) -> None:
        self.path = Path(path)
        self.meta = meta
        self.process_rank = int(process_rank)
        self.flush_rows = int(flush_rows)
        self.flush_seconds = float(flush_seconds)
        self._writable = writable
        self._buffers: dict[str, list[dict]] = {t: [] for t in TABLES}
        self._last_flush = time.monotonic()
        self._generation = self._next_generation() if writable else None
        self._seq = 0
        self._lock: RunLock | None = None

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, meta: dict | None = None, *, exist_ok: bool = False,
               process_rank: int = 0, flush_rows: int = 512, flush_seconds: float = 30.0) -> RunStore:
        """Create a run directory (or, with ``exist_ok``, reopen it for appending: resume).

        ``meta`` must be JSON-serializable; ``run_id`` defaults to the directory name. Only rank 0
        writes ``run.json``; other ranks wait for it. The writer holds the directory's
        :class:`RunLock` for its rank until :meth:`close`: a second writing process is refused
        ("in use by PID n"); within one process the lock is re-entrant.
        """
        path = Path(path)
        meta_file = path / "run.json"
        if meta_file.exists() and not exist_ok:
            raise StoreError(f"{path} already holds a run; pass exist_ok=True (resume) or choose another directory")
        lock = RunLock(path, rank=process_rank).acquire()
        try:
            store = cls._create(path, meta, exist_ok=exist_ok, process_rank=process_rank, flush_rows=flush_rows,
                                flush_seconds=flush_seconds)
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        return store

    @classmethod
    def _create(cls, path: Path, meta, *, exist_ok: bool, process_rank: int, flush_rows: int,
                flush_seconds: float) -> RunStore:
        meta_file = path / "run.json"
        if meta_file.exists():
            if not exist_ok:
                raise StoreError(f"{path} already holds a run; pass exist_ok=True (resume) or choose another directory")
            existing = cls._read_meta(path)
            return cls(path, existing, writable=True, process_rank=process_rank,
                       flush_rows=flush_rows, flush_seconds=flush_seconds)
        if process_rank != 0:
            deadline = time.monotonic() + 60
            while not meta_file.exists():
                if time.monotonic() > deadline:
                    raise StoreError(f"rank {process_rank}: {meta_file} did not appear (rank 0 creates it)")
                time.sleep(0.05)
            return cls(path, cls._read_meta(path), writable=True, process_rank=process_rank,
                       flush_rows=flush_rows, flush_seconds=flush_seconds)
        full = dict(meta or {})
        full.setdefault("run_id", path.resolve().name)
        full["format"] = FORMAT
        full["schema_version"] = SCHEMA_VERSION
        full.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        full.setdefault("versions", _versions())
        try:
            data = json.dumps(full, indent=2, sort_keys=True, allow_nan=True).encode()
        except (TypeError, ValueError) as exc:
            raise StoreError(f"run metadata for {path} is not JSON-serializable: {exc}") from exc
        for sub in TABLES:
            ensure_dir(path / sub)
        _atomic_write_bytes(meta_file, data)
        return cls(path, full, writable=True, process_rank=process_rank,
                   flush_rows=flush_rows, flush_seconds=flush_seconds)

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunStore:
        """Open an existing run read-only."""
        path = Path(path)
        return cls(path, cls._read_meta(path), writable=False)

    @staticmethod
    def _read_meta(path: Path) -> dict:
        meta_file = path / "run.json"
        if not path.exists():
            raise StoreError(f"run directory {path} does not exist")
        meta = read_json(meta_file, StoreError, missing=f"{path} is not a muonscope run directory (no run.json)")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise StoreError(f"{meta_file} is not a muonscope run file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
        check_meta(meta, meta_file)
        return meta

    @property
    def run_id(self) -> str:
        return str(self.meta["run_id"])

    def _parts(self, table: str) -> list[tuple[int, int, int, Path]]:
        d = self.path / table
        out = []
        if d.is_dir():
            for p in d.iterdir():
                m = _PART.match(p.name)
                if m:
                    out.append((int(m[1]), int(m[2]), int(m[3]), p))
                elif not p.name.startswith(".tmp-"):
                    raise StoreError(f"foreign file in run store: {p} (expected part-g*-r*-*.parquet)")
        return sorted(out)

    def _next_generation(self) -> int:
        gens = [g for t in TABLES for g, *_ in self._parts(t)]
        marker = self.path / f".generation-r{self.process_rank}"
        floor = int(marker.read_text()) + 1 if marker.exists() else 0
        gen = max([floor, *(g + 1 for g in gens)])
        _atomic_write_bytes(marker, str(gen).encode())
        return gen

    # --- writing -------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if not self._writable:
            raise StoreError(f"run store {self.path} was opened read-only")

    def append_spectra(self, rows: Iterable[dict]) -> None:
        self._append("spectra", rows)

    def append_metrics(self, rows: Iterable[dict]) -> None:
        self._append("metrics", rows)

    def log_metrics(self, step: int, **values: float) -> None:
        """Convenience: one metrics row per keyword, e.g. ``log_metrics(10, train_loss=2.3)``."""
        self.append_metrics({"run_id": self.run_id, "step": int(step), "name": k, "value": float(v)}
                            for k, v in values.items())

    def _append(self, table: str, rows: Iterable[dict]) -> None:
        self._check_writable()
        buf = self._buffers[table]
        for row in rows:
            row = dict(row)
            row.setdefault("run_id", self.run_id)
            buf.append(row)
        if (sum(len(b) for b in self._buffers.values()) >= self.flush_rows
                or time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as new part files (atomic rename)."""
        if not self._writable:
            return
        for table, buf in self._buffers.items():
            if not buf:
                continue
            arrow = _to_table(buf)
            name = f"part-g{self._generation:04d}-r{self.process_rank:03d}-{self._seq:06d}.parquet"
            dest = self.path / table / name
            atomic_write(dest, lambda fh, t=arrow: pq.write_table(t, fh, compression="zstd"),
                         what="run store part")
            self._seq += 1
            buf.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush, stop writing and release the writer lock."""
        try:
            self.flush()
        finally:
            self._writable = False
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update_meta(self, **fields) -> None:
        """Merge ``fields`` into run.json (rank 0 only; atomic)."""
        self._check_writable()
        self.meta.update(fields)
        if self.process_rank == 0:
            _atomic_write_bytes(self.path / "run.json",
                                json.dumps(self.meta, indent=2, sort_keys=True).encode())

    # --- reading -------------------------------------------------------------------------------
    def table(self, name: str) -> pa.Table:
        """All rows of ``name`` ("spectra" or "metrics"), newest generation per key, sorted."""
        if name not in TABLES:
            raise StoreError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        pieces = []
        for gen, _rank, _seq, p in self._parts(name):
            try:
                t = pq.read_table(p)
            except (OSError, pa.ArrowException) as exc:
                raise StoreError(f"corrupt part file {p}: {exc}") from exc
            pieces.append(t.append_column("_generation", pa.array([gen] * t.num_rows, pa.int64())))
        if not pieces:
            return pa.table({})
        t = pa.concat_tables(pieces, promote_options="default")
        keys = [k for k in _KEYS[name] if k in t.column_names]
        if keys:
            df = t.to_pandas()
            df = df.sort_values("_generation", kind="stable").drop_duplicates(keys, keep="last")
            df = df.drop(columns="_generation").sort_values(keys, kind="stable").reset_index(drop=True)
            return pa.Table.from_pandas(df, preserve_index=False)
        return t.drop_columns(["_generation"])

    def spectra(self, as_pandas: bool = True):
        t = self.table("spectra")
        return t.to_pandas() if as_pandas else t

    def metrics(self, as_pandas: bool = True):
        t = self.table("metrics")
        return t.to_pandas() if as_pandas else t


def check_meta(meta: dict, meta_file) -> None:
    """Refuse a run.json whose typed fields are malformed: ``schema_version`` an integer this
    version reads, ``model_params`` a positive integral number, ``run_id`` / ``preset`` strings,
    ``seed`` an integer, ``config`` an object."""
    v = meta.get("schema_version", SCHEMA_VERSION)
    if isinstance(v, bool) or not isinstance(v, int):
        raise StoreError(f"{meta_file}: schema_version must be an integer, got {v!r}")
    if v > SCHEMA_VERSION:
        raise StoreError(f"{meta_file} has schema version {v}; this muonscope reads <= {SCHEMA_VERSION}: "
                         "upgrade muonscope")
    if v < 1:
        raise StoreError(f"{meta_file}: schema_version must be >= 1, got {v!r}")
    try:
        if meta.get("model_params") is not None:
            if isinstance(meta["model_params"], str):
                raise ConfigError(f"model_params must be a number, got {meta['model_params']!r}")
            validate.count("model_params", meta["model_params"], high=10**15)
        if meta.get("seed") is not None:
            if isinstance(meta["seed"], str):
                raise ConfigError(f"seed must be an integer, got {meta['seed']!r}")
            validate.integer("seed", meta["seed"])
    except ConfigError as exc:
        raise StoreError(f"{meta_file}: {exc}") from None
    for key in ("run_id", "preset", "status"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise StoreError(f"{meta_file}: {key} must be a string, got {meta[key]!r}")
    if meta.get("config") is not None and not isinstance(meta["config"], dict):
        raise StoreError(f"{meta_file}: config must be an object, got {type(meta['config']).__name__}")


LOCK_NAME = ".lock"


_HELD: dict[str, list] = {}  # lock file -> [fd, count, pid]: locks this process holds (re-entrant)


class RunLock:
    """Exclusive writer lock of a run directory: ``.lock`` holding ``pid host``, held with ``flock``
    (``.lock-r{R}`` for process rank R > 0, whose parts are its own).

    The kernel releases an ``flock`` when its process dies, so a lock left by a killed writer is
    stale by construction and the next writer takes it over. A live holder in another process makes
    :meth:`acquire` raise :class:`StoreError` ("run directory X is in use by PID n on host h").
    Within one process the lock is re-entrant (``train`` holds it and its run store takes it again).
    Acquiring creates the directory (with parents).
    """

    def __init__(self, path: str | os.PathLike, *, rank: int = 0) -> None:
        self.path = Path(path)
        self.file = self.path / (LOCK_NAME if not rank else f"{LOCK_NAME}-r{int(rank)}")
        self._key: str | None = None

    def acquire(self) -> RunLock:
        if self._key is not None:
            return self
        ensure_dir(self.path)
        key = os.path.realpath(self.file)
        held = _HELD.get(key)
        if held is not None and held[2] == os.getpid():
            held[1] += 1
            self._key = key
            return self
        while True:
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise os_error(exc, self.file, "cannot lock") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise StoreError(f"run directory {self.path} is in use by {holder}; wait for it to finish "
                                 "or stop it first") from None
            except OSError as exc:
                os.close(fd)
                raise os_error(exc, self.file, "cannot lock") from None
            try:  # the file may have been unlinked by a releasing holder between open and flock
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise os_error(exc, self.file, "cannot lock") from None
        _HELD[key] = [fd, 1, os.getpid()]
        self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        key, self._key = self._key, None
        held = _HELD.get(key)
        if held is None or held[2] != os.getpid():
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[key]
        fd = held[0]
        with contextlib.suppress(OSError):
            os.unlink(self.file)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._key is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 256).decode(errors="replace").split()
    except OSError:
        text = []
    if text and text[0].isdigit():
        return f"PID {text[0]}" + (f" on host {text[1]}" if len(text) > 1 else "")
    return "another process"


def lock_holder(path: str | os.PathLike) -> str | None:
    """Who holds the writer lock of run directory ``path`` ("PID n on host h"), or None."""
    f = Path(path) / LOCK_NAME
    try:
        fd = os.open(f, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories among ``paths``: each path is a run, or a directory holding runs at any depth
    (a run directory is not searched further)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "run.json").exists():
            found.append(p)
        elif p.is_dir():
            sub = []
            for root, dirs, files in os.walk(p):
                if "run.json" in files:
                    sub.append(Path(root))
                    dirs.clear()
                else:
                    dirs[:] = [d for d in dirs if not d.startswith(".")]
            if not sub:
                raise StoreError(f"{p} holds no run directories (no run.json in it or below it)")
            found.extend(sorted(sub))
        else:
            raise StoreError(f"run directory {p} does not exist")
    return found


def read_runs(paths: Iterable[str | os.PathLike], table: str = "spectra", meta: Sequence[str] = ()):
    """Several runs' ``table`` as one pandas DataFrame (paths may be sweep directories); each key of
    ``meta`` (e.g. ``"seed"``, ``"preset"``) becomes a column holding that run's run.json value."""
    import pandas as pd

    frames = []
    for p in find_runs(paths):
        store = RunStore.open(p)
        df = store.table(table).to_pandas()
        if len(df):
            frames.append(df.assign(**{k: store.meta.get(k) for k in meta}))
    if not frames:
        raise StoreError(f"no {table} rows found in {', '.join(map(str, paths))}")
    return pd.concat(frames, ignore_index=True)
