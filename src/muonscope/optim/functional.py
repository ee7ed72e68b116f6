"""The Muon step as plain functions of tensors (BRIEF §1).

For each (out, in) matrix W of a parameter (its matrix view, :mod:`muonscope.optim.views`: the
parameter itself, its transpose, its (out, rest) flattening, or one expert of a stack) with
gradient G:

    B ← lerp(B, G, 1−β)  ("ema", torch.optim.Muon)   or   B ← β·B + G  ("sum", heavy ball)
    X = lerp(G, B, β) ("ema") or G + β·B ("sum") with Nesterov, else X = B
    O = orth(X)                                      NS toward polar(X) = UVᵀ, or exact polar
    W ← W·(1 − lr·wd) − lr·scale(m, n)·O

with scale "original" √max(1, m/n) or "match_rms_adamw" 0.2·√max(m, n) for the m×n matrix that
is orthogonalized (one matrix of the parameter's view, or one row block of it).

:func:`muon_update` is the whole algorithm for one matrix. The optimizer runs the same math on
many matrices at once: :func:`momentum_` (one multi-tensor op), :class:`Work` (one matrix to
orthogonalize, its NS input formed lazily), :func:`orthogonalize` (one batched call per bucket of
same-shape matrices sharing an orthogonalizer) and :func:`apply_updates`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from muonscope.optim import distributed as D
from muonscope.optim.views import matrices, shares_storage
from muonscope.orth.orthogonalizers import Orthogonalizer

ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "none")
CPU_BATCH_BYTES = 1 << 20  # largest batch of same-shape NS inputs stacked on CPU (cache-sized)
CPU_MIN_BATCH = 4  # fewer matrices per batch than this: each runs on its own (no stacking copy)
MOMENTUM_FORMS = ("ema", "sum")


def lr_ratio(adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """lr multiplier for an orthogonalized rows×cols matrix."""
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols)) if cols else 1.0
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def momentum_(bufs: list[torch.Tensor], grads: list[torch.Tensor], beta: float, form: str) -> None:
    """Update momentum buffers in place: "ema" B ← lerp(B, G, 1−β); "sum" B ← βB + G."""
    if any(D.is_dtensor(b) for b in bufs):
        for b, g in zip(bufs, grads, strict=True):
            if form == "ema":
                b.lerp_(g, 1 - beta)
            else:
                b.mul_(beta).add_(g)
    elif form == "ema":
        torch._foreach_lerp_(bufs, grads, 1 - beta)
    else:
        torch._foreach_mul_(bufs, beta)
        torch._foreach_add_(bufs, grads)


def ns_input(g: torch.Tensor, b: torch.Tensor, beta: float, nesterov: bool, form: str) -> torch.Tensor:
    """The NS input from gradient and (updated) momentum: B itself, or with Nesterov
    lerp(G, B, β) ("ema") / G + β·B ("sum")."""
    if not nesterov:
        return b
    return g.lerp(b, beta) if form == "ema" else g.add(b, alpha=beta)


def muon_update(grad: torch.Tensor, buf: torch.Tensor, orth: Orthogonalizer, *, beta: float = 0.95,
                nesterov: bool = True, form: str = "ema", adjust_lr_fn: str | None = None) -> torch.Tensor:
    """One matrix's Muon direction scale·orth(X) (``buf`` updated in place); W ← W·(1 − lr·wd) − lr·it."""
    momentum_([buf], [grad], beta, form)
    X = ns_input(grad, buf, beta, nesterov, form).flatten(1)
    O, _ = orth(X)
    return O.reshape(grad.shape).to(grad.dtype) * lr_ratio(adjust_lr_fn, X.shape[0], X.shape[1])


@dataclass
class Work:
    """One matrix to orthogonalize: one (out, in) matrix of a parameter's view (``index`` = (matrix
    index e, row slice or None) into :func:`~muonscope.optim.views.matrices`), or a row block of it.

    The NS input is formed only by the rank that orthogonalizes it, right before its NS call
    (:meth:`materialize`), so temporaries are reused bucket by bucket; ``matrix`` keeps it when
    hooks need it (and holds the gathered full matrix of a DTensor parameter).
    """

    param: torch.Tensor
    group: dict
    name: str
    matrix: torch.Tensor | None
    momentum: torch.Tensor | None
    index: tuple[int, slice | None]
    orth: Orthogonalizer
    key: tuple
    flops: int
    lr_ratio: float
    dtype: torch.dtype  # the orthogonalizer's compute dtype (the update comes back in it)
    shape: torch.Size
    device: torch.device
    grad: torch.Tensor | None = None  # rows of the flattened gradient while the input is not formed
    update: torch.Tensor | None = None
    spectrum: torch.Tensor | None = None
    view: str = "flatten"
    expert: int | None = None  # index in an expert stack

    @property
    def whole(self) -> bool:
        """Whether this matrix is the parameter's only one (no experts, no row split)."""
        return self.index == (0, None) and self.expert is None

    @property
    def _recipe(self) -> tuple[float, bool, str]:
        g = self.group
        return float(g["momentum"]), bool(g["nesterov"]), g["momentum_form"]

    @property
    def stored_transposed(self) -> bool:
        """Whether the inputs are transposed views of contiguous tensors (HF ``Conv1D`` weights,
        ``experts_t`` stacks): NS then runs on their transposes, which are contiguous, since
        NS(Xᵀ) = NS(X)ᵀ — no strided mixed-dtype pass on the way in or out."""
        if self.matrix is not None or self.grad is None or self.momentum is None:
            return False
        return all(t.ndim == 2 and not t.is_contiguous() and t.mT.is_contiguous() for t in (self.grad, self.momentum))

    def _sources(self, t: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.grad.mT, self.momentum.mT) if t else (self.grad, self.momentum)

    def materialize(self, t: bool = False) -> torch.Tensor:
        """The NS input (its transpose with ``t``)."""
        if self.matrix is not None:
            return self.matrix.mT if t else self.matrix
        return ns_input(*self._sources(t), *self._recipe)

    def materialize_into(self, out: torch.Tensor, t: bool = False) -> None:
        """Write the NS input (its transpose with ``t``) into ``out`` (e.g. a bf16 batch slot): the
        elementwise op computes in the inputs' dtype and rounds once on store, exactly as forming
        it and then casting."""
        beta, nesterov, form = self._recipe
        if self.matrix is not None or not nesterov:
            out.copy_(self.materialize(t))
            return
        g, m = self._sources(t)
        if form == "ema":
            torch.lerp(g, m, beta, out=out)
        else:
            torch.add(g, m, alpha=beta, out=out)

    def input_in(self, dtype: torch.dtype, t: bool = False) -> tuple[torch.Tensor, bool]:
        """The NS input (its transpose with ``t``) in ``dtype`` and whether it is scratch (formed
        here, free to overwrite): the momentum view itself when possible, else formed once."""
        nesterov = self._recipe[1]
        if self.matrix is None and (not nesterov or self.grad.dtype == dtype):
            X, owned = self.materialize(t), nesterov  # Nesterov forms a fresh tensor; else the buffer
        else:
            X, owned = (None if self.matrix is None else self.materialize(t)), False
        if X is None or X.dtype != dtype:
            shape = self.shape[::-1] if t else self.shape
            X, owned = torch.empty(shape, dtype=dtype, device=self.device), True
            self.materialize_into(X, t)
        return X, owned


def _call(orth: Orthogonalizer, X: torch.Tensor, want_spectrum: bool, scratch: bool):
    """orth(X), letting an NS orthogonalizer normalize X in place when it is scratch."""
    if scratch and getattr(orth, "accepts_overwrite", False):
        return orth(X, want_spectrum=want_spectrum, overwrite=True)
    return orth(X, want_spectrum=want_spectrum)


def orthogonalize(works: list[Work], want_spectrum: bool, retain: bool = False) -> None:
    """Fill each work's ``update`` (and ``spectrum``): one batched call per (orthogonalizer, shape)
    bucket, stacked as they are (NS runs tall matrices on their XᵀX side, so nothing is
    transposed and every elementwise op is contiguous). NS inputs are cast to the compute dtype
    while stacking into a batch the call may overwrite (on CPU at most :data:`CPU_BATCH_BYTES` per
    batch), and updates stay in it, as torch.optim.Muon does. With ``retain`` each work keeps its
    NS input in ``matrix`` (for hooks)."""
    buckets: dict[tuple, list[Work]] = {}
    for w in works:
        m, n = w.shape
        if m * n == 0:  # nothing to orthogonalize
            w.update = torch.zeros(w.shape, dtype=w.dtype, device=w.device)
            w.spectrum = torch.zeros(min(m, n), dtype=torch.float64) if want_spectrum else None
            if retain:
                w.matrix = w.materialize()
            continue
        t = w.stored_transposed
        buckets.setdefault((w.key, *((n, m) if t else (m, n)), t, w.dtype, w.device), []).append(w)
    for (*_, t, _, _), whole in buckets.items():
        if retain:  # hooks see each NS input as formed, in its own dtype
            for w in whole:
                w.matrix = w.materialize()
        for bucket in _chunks(whole):
            _orthogonalize_bucket(bucket, want_spectrum, t)


def _chunks(bucket: list[Work]) -> list[list[Work]]:
    """On CPU, batches of at most :data:`CPU_BATCH_BYTES`, and none of fewer than
    :data:`CPU_MIN_BATCH` matrices (those run one by one): stacking pays for small matrices, whose
    per-call overhead it shares, while the elementwise passes of a large batch (the fused products'
    input copies, normalization) fall out of cache — a 9 MB batch of 768² bf16 matrices ran
    1.3-1.45x slower per matrix than pairs, and 512² ones were fastest unstacked (measured)."""
    first = bucket[0]
    if first.device.type != "cpu":
        return [bucket]
    per = CPU_BATCH_BYTES // (math.prod(first.shape) * first.dtype.itemsize)
    per = per if per >= CPU_MIN_BATCH else 1
    return [bucket[i:i + per] for i in range(0, len(bucket), per)]


def _orthogonalize_bucket(bucket: list[Work], want_spectrum: bool, t: bool = False) -> None:
    """One NS call for same-shape works: a single one on its own input, several stacked; with
    ``t`` on the inputs' (contiguous) transposes, each update then handed back as a transposed view."""
    first = bucket[0]
    # fp16's range (6.5e4) would overflow on stacking: stack in fp32, NS normalizes, then casts
    dtype = torch.float32 if first.dtype == torch.float16 else first.dtype
    if len(bucket) == 1:
        X, scratch = first.input_in(dtype, t)
        O, first.spectrum = _call(first.orth, X, want_spectrum, scratch)
        O = O.to(first.dtype)  # updates come back in the compute dtype (a no-op unless fp16)
        first.update = O.mT if t else O
    else:
        shape = first.shape[::-1] if t else first.shape
        G = torch.empty((len(bucket), *shape), dtype=dtype, device=first.device)
        for i, w in enumerate(bucket):
            w.materialize_into(G[i], t)
        O, S = _call(first.orth, G, want_spectrum, True)
        O = O.to(first.dtype)
        for i, w in enumerate(bucket):
            w.update = O[i].mT if t else O[i]
            w.spectrum = S[i] if S is not None else None
    if want_spectrum:
        for w in bucket:
            if w.spectrum is not None:
                w.spectrum = w.spectrum.to(torch.float64)


def _as_param(update: torch.Tensor, view: str, shape: torch.Size) -> torch.Tensor:
    """The update of a parameter's only (out, in) matrix, laid out as the parameter."""
    return (update.mT if view in ("transposed", "experts_t") else update).reshape(shape)


def apply_updates(works: list[Work]) -> None:
    """W ← W·(1 − lr·wd) − lr·scale·O on each parameter's local data, O written through its view."""
    by_param: dict[int, list[Work]] = {}
    for w in works:
        by_param.setdefault(id(w.param), []).append(w)
    for pw in by_param.values():
        p, group = pw[0].param, pw[0].group
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        local = D.local_part(p)
        if wd != 0.0:
            local.mul_(1 - lr * wd)
        view = pw[0].view
        if len(pw) == 1 and pw[0].whole:
            w = pw[0]
            local.add_(D.shard_like(_as_param(w.update, view, p.shape), p), alpha=-(lr * w.lr_ratio))
        elif not D.is_dtensor(p) and (p.is_contiguous() if view == "matrix" else shares_storage(p, view)):
            mats = matrices(p, view)
            for w in pw:
                e, rows = w.index
                (mats[e] if rows is None else mats[e][rows]).add_(w.update, alpha=-(lr * w.lr_ratio))
        else:
            U = torch.zeros(p.shape, dtype=p.dtype, device=pw[0].device)
            mats = matrices(U, view)
            for w in pw:
                e, rows = w.index
                (mats[e] if rows is None else mats[e][rows]).copy_(w.update.to(p.dtype) * w.lr_ratio)
            local.add_(D.shard_like(U, p), alpha=-lr)


def nonfinite_mask(grads: list[torch.Tensor], ctx=None) -> list[bool]:
    """Which gradients hold a NaN/Inf (on any rank: every rank takes the same decision).

    Screened by one multi-tensor 2-norm over the local data (NaN/Inf make it non-finite; it is
    the fastest reduction); a non-finite norm is confirmed entry-wise, since squares of huge
    finite values can overflow too.
    """
    if not grads:
        return []
    local = [D.local_part(g) for g in grads]
    norms = torch._foreach_norm(local)
    device = norms[0].device
    bad = torch.logical_not(torch.isfinite(torch.stack([v.float().to(device) for v in norms])))
    if bad.any():
        for i in torch.nonzero(bad).flatten().tolist():
            bad[i] = not bool(torch.isfinite(local[i]).all())
    bad = bad.to(torch.int32)
    if ctx:
        bad = ctx.all_reduce_max_(bad)
    return [bool(b) for b in bad.tolist()]
