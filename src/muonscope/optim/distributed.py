"""Distributed Muon: orthogonalization work split across ranks, results all-gathered.

Every rank holds the full momentum (gradients are identical across ranks after data-parallel
all-reduce), so only the orthogonalization is sharded: matrices are assigned to ranks by a
deterministic longest-processing-time rule on their FLOPs (largest first, to the least-loaded
rank, ties to the lower index), each rank orthogonalizes its share, and one all-gather per dtype
hands every rank every update. Before each sharded step the ranks compare a hash of their
parameter layouts (:func:`check_same_layout`; the layout itself is recomputed only when the
parameters change), so a mismatch raises the same :class:`~muonscope.errors.DistributedMismatchError`
everywhere instead of hanging or crashing in a collective. Parameters that are DTensors (FSDP2 shards) are gathered to the full
matrix for NS and the update re-sharded to the local shard without further communication.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence

import torch
import torch.distributed as dist

from muonscope.errors import ConfigError, DistributedMismatchError


class DistContext:
    """Rank and world size of the process group the optimizer shards work over."""

    def __init__(self, group=None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    @staticmethod
    def detect(process_group=None, enabled: bool | None = None) -> DistContext | None:
        """A context when enabled (None: auto) and a process group with > 1 rank is initialized."""
        if enabled is False:
            return None
        if not (dist.is_available() and dist.is_initialized()):
            if enabled:
                raise ConfigError("distributed=True needs torch.distributed.init_process_group() first")
            return None
        ctx = DistContext(process_group)
        return ctx if ctx.world > 1 or enabled else None

    def all_reduce_max_(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t


def assign_owners(flops: Sequence[int], world: int) -> list[int]:
    """Owner rank of each work item: LPT greedy balancing of FLOPs, deterministic."""
    owners = [0] * len(flops)
    loads = [0] * world
    for i in sorted(range(len(flops)), key=lambda i: (-flops[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        owners[i] = r
        loads[r] += int(flops[i])
    return owners


def share(works: Sequence, ctx: DistContext | None) -> tuple[list[int], list]:
    """(owner rank of each work, the works this rank orthogonalizes); everything is local without ``ctx``."""
    if not ctx:
        return [0] * len(works), list(works)
    owners = assign_owners([w.flops for w in works], ctx.world)
    return owners, [w for w, r in zip(works, owners, strict=True) if r == ctx.rank]


def gather_updates_(works: Sequence, owners: Sequence[int], ctx: DistContext | None) -> None:
    """Give every work its update from its owner rank (nothing to do without ``ctx``)."""
    if not ctx:
        return
    ups = all_gather_updates([w.update for w in works], [w.shape for w in works], [w.dtype for w in works],
                             [w.device for w in works], owners, ctx)
    for w, u in zip(works, ups, strict=True):
        w.update = u


def all_gather_updates(updates: list[torch.Tensor | None], shapes: Sequence[torch.Size],
                       dtypes: Sequence[torch.dtype], devices: Sequence[torch.device],
                       owners: Sequence[int], ctx: DistContext) -> list[torch.Tensor]:
    """Fill every item's update from its owner: one padded all-gather per (dtype, device).

    ``updates[i]`` is set on the owner rank and None elsewhere; shapes, dtypes and owners are known
    to every rank, so each rank can unpack the gathered buffers without extra metadata.
    """
    out: list[torch.Tensor | None] = list(updates)
    keys = sorted({(str(dt), str(dev)) for dt, dev in zip(dtypes, devices, strict=True)})
    for key in keys:
        idx = [i for i in range(len(shapes)) if (str(dtypes[i]), str(devices[i])) == key]
        dtype, device = dtypes[idx[0]], devices[idx[0]]
        per_rank = [[i for i in idx if owners[i] == r] for r in range(ctx.world)]
        sizes = [sum(shapes[i].numel() for i in items) for items in per_rank]
        width = max(sizes)
        if width == 0:
            continue
        local = torch.zeros(width, dtype=dtype, device=device)
        offset = 0
        for i in per_rank[ctx.rank]:
            n = shapes[i].numel()
            local[offset:offset + n].copy_(updates[i].reshape(-1))
            offset += n
        gathered = [torch.empty_like(local) for _ in range(ctx.world)]
        dist.all_gather(gathered, local, group=ctx.group)
        for r, items in enumerate(per_rank):
            if r == ctx.rank:
                continue
            offset = 0
            for i in items:
                n = shapes[i].numel()
                out[i] = gathered[r][offset:offset + n].view(shapes[i])
                offset += n
    return out  # type: ignore[return-value]


def is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed tensors
        return False
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The full (unsharded) tensor: gathers a DTensor (a collective: call on every rank)."""
    return t.full_tensor() if is_dtensor(t) else t


def local_part(t: torch.Tensor) -> torch.Tensor:
    """The local tensor of a DTensor (sharing storage), or ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's local shard of ``full`` laid out as the DTensor ``like`` (no communication)."""
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def layout_row(group: int, name: str, p: torch.Tensor, view: str, split=None) -> tuple:
    """One parameter as every rank must see it: (group, name, global shape, dtype, view, split)."""
    return (int(group), str(name), tuple(int(s) for s in p.shape), str(p.dtype).removeprefix("torch."), str(view),
            list(split) if isinstance(split, (list, tuple)) else split)


def _describe(row) -> str:
    if row is None:
        return "no parameter"
    group, name, shape, dtype, view, split, *grad = row
    return (f"{name!r} (group {group}, shape {tuple(shape)}, {dtype}, view {view}"
            f"{'' if split is None else f', split {split}'}"
            f"{'' if not grad else ', with a gradient' if grad[0] else ', without a gradient'})")


def layout_mismatch(rows_by_rank: Sequence[Sequence[tuple]]) -> str | None:
    """None when every rank's layout rows equal rank 0's, else a message naming the first
    differing parameter and the ranks (the same text on every rank)."""
    ref = [tuple(r) for r in rows_by_rank[0]]
    for rank, rows in enumerate(rows_by_rank[1:], start=1):
        rows = [tuple(r) for r in rows]
        if rows == ref:
            continue
        i = next((i for i, (a, b) in enumerate(zip(ref, rows, strict=False)) if a != b), min(len(ref), len(rows)))
        a = ref[i] if i < len(ref) else None
        b = rows[i] if i < len(rows) else None
        only_grad = a is not None and b is not None and len(a) == len(b) == 7 and a[:6] == b[:6]
        hint = ("every rank must compute gradients for the same parameters (set unused ones' grad to zeros, or "
                "use DDP's find_unused_parameters)" if only_grad else
                "build the optimizer over the same parameters (names, shapes, dtypes, views, orthogonalizers, groups) "
                "in the same order on every rank")
        return (f"the optimizer's parameters differ across ranks: at parameter {i}, rank 0 has {_describe(a)} "
                f"and rank {rank} has {_describe(b)} (rank 0: {len(ref)} parameters, rank {rank}: {len(rows)}); "
                + hint)
    return None


def layout_digest(rows: Sequence[tuple]) -> int:
    """A 64-bit content hash of layout rows (equal on every process for equal rows)."""
    text = repr([tuple(r) for r in rows]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little", signed=True)


def check_same_layout(rows: Sequence[tuple], ctx: DistContext, digest: int | None = None,
                      grads: Sequence[bool] | None = None) -> None:
    """Raise :class:`DistributedMismatchError` on every rank when ranks hold different layout rows.

    One all-gather of a fixed-size (hash, count) tensor, so ranks with different parameters still
    meet in the same collective (cheap enough for every step: a change on one rank alone is seen
    on the next one); only when the hashes differ do the ranks exchange their rows
    (``all_gather_object``) to name the first difference. Every rank decides from the same
    gathered data, so all raise, or none does. ``digest``: :func:`layout_digest` of ``rows``;
    ``grads``: which of them have a gradient this step (compared too: the step's collectives
    cover exactly those).
    """
    digest = layout_digest(rows) if digest is None else digest
    backend = dist.get_backend(ctx.group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    grad_crc = zlib.crc32(bytes(bytearray(map(bool, grads)))) if grads is not None else 0
    mine = torch.tensor([digest, len(rows), grad_crc], dtype=torch.int64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(ctx.world)]
    dist.all_gather(everyone, mine, group=ctx.group)
    gathered = torch.stack(everyone).tolist()
    if all(g == gathered[0] for g in gathered):
        return
    rows = [tuple(r) for r in rows] if grads is None else [(*r, bool(g)) for r, g in zip(rows, grads, strict=True)]
    rows_by_rank: list = [None] * ctx.world
    dist.all_gather_object(rows_by_rank, rows, group=ctx.group)
    message = layout_mismatch(rows_by_rank) or "the optimizer's parameters differ across ranks (same rows, hash differs)"
    raise DistributedMismatchError(message)
