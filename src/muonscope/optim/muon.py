"""Muon: momentum, then an orthogonalized update, chosen per parameter group or per parameter.

For a weight W with gradient G, flattened to (out, rest) when it has more than two dims:

    B ← β·B + (1−β)·G   ("ema", as torch.optim.Muon)   or   B ← β·B + G   ("sum", heavy ball)
    X = G + β·(B − G)… i.e. lerp(G, B, β) ("ema") or G + β·B ("sum") with Nesterov, else X = B
    O = orth(X)          NS toward polar(X) = UVᵀ (or exact polar), optionally per row block
    W ← W·(1 − lr·wd) − lr·scale(m, n)·O

with scale "original" √max(1, m/n) or "match_rms_adamw" 0.2·√max(m, n), m×n the matrix actually
orthogonalized (the flattened shape, or one row block). Same-shape matrices that share an
orthogonalizer are batched into one NS call. Under ``torch.distributed`` the orthogonalization is
split across ranks (see :mod:`muonscope.optim.distributed`).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from muonscope.errors import ConfigError, MuonscopeError, NonFiniteError
from muonscope.optim import distributed as D
from muonscope.optim.adaptive import ADAPTIVE, AdaptiveSteps, HybridControl
from muonscope.optim.hooks import OrthEvent
from muonscope.optim.plan import Plan, load_plan
from muonscope.orth.analysis import fidelity_stats
from muonscope.orth.hybrid import HybridNS
from muonscope.orth.matrix_ns import default_compute_dtype
from muonscope.orth.orthogonalizers import NewtonSchulz, Orthogonalizer, make_orthogonalizer
from muonscope.orth.schedules import JORDAN, Schedule, get_schedule

DEFAULT_NS_COEFFICIENTS = JORDAN
ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "none")
MOMENTUM_FORMS = ("ema", "sum")
NONFINITE_POLICIES = ("raise", "skip")
FIDELITY_KEYS = ("distortion", "frac_failed", "frac_failed_50", "ns_out_max")  # in stats["layers"] on sampled steps


def lr_ratio(adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """lr multiplier for an orthogonalized rows×cols matrix."""
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols)) if cols else 1.0
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def _dtype_name(dtype) -> str | None:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"ns_dtype must be a floating torch dtype (e.g. torch.bfloat16) or None, got {dtype!r}")
    return str(dtype).removeprefix("torch.")


def _schedule_value(value):
    """Normalize a group's ``schedule`` to a checkpoint-safe value: None, a name, or a dict."""
    if value is None:
        return None
    if isinstance(value, dict):
        Schedule.from_dict(value)
        return value
    sched = get_schedule(value)
    try:
        if get_schedule(sched.name) == sched:
            return sched.name
    except MuonscopeError:
        pass
    return sched.to_dict()


@dataclass
class _Item:
    """A parameter with a gradient this step."""

    param: torch.Tensor
    grad: torch.Tensor
    group: dict
    name: str


@dataclass
class _Work:
    """One matrix to orthogonalize (a whole flattened parameter, or one row block of it).

    The NS input is formed only by the rank that orthogonalizes it, right before its NS call
    (:meth:`materialize`), so temporaries are reused bucket by bucket; ``matrix`` keeps it when
    hooks need it (and holds the gathered full matrix of a DTensor parameter).
    """

    item: _Item
    name: str
    matrix: torch.Tensor | None
    momentum: torch.Tensor | None
    rows: slice | None
    orth: Orthogonalizer
    key: tuple
    flops: int
    lr_ratio: float
    dtype: torch.dtype  # the orthogonalizer's compute dtype for NS (the update comes back in it)
    shape: torch.Size
    device: torch.device
    source: tuple | None = None  # (grad rows, momentum rows, β, nesterov, form) when not yet formed
    update: torch.Tensor | None = None
    spectrum: torch.Tensor | None = None

    def materialize(self) -> torch.Tensor:
        if self.matrix is not None:
            return self.matrix
        g, b, beta, nesterov, form = self.source
        return ns_input(g, b, beta, nesterov, form)

    def materialize_into(self, out: torch.Tensor) -> None:
        """Write the NS input into ``out`` (e.g. a bf16 batch slot): the elementwise op computes
        in the inputs' dtype and rounds once on store, exactly as forming it and then casting."""
        if self.matrix is not None or not self.source[3]:
            out.copy_(self.materialize())
            return
        g, b, beta, _, form = self.source
        if form == "ema":
            torch.lerp(g, b, beta, out=out)
        else:
            torch.add(g, b, alpha=beta, out=out)


class Muon(Optimizer):
    """Muon with per-group and per-parameter orthogonalization (a ``torch.optim.Optimizer``).

    Arguments shared with ``torch.optim.Muon`` mean the same and default the same (``ns_steps=None``
    means the schedule's default, 5 for Jordan's coefficients). Every option below may also be set
    per param group; a ``plan`` (dict, JSON path or :class:`~muonscope.optim.plan.Plan`) sets
    schedule and steps per parameter name, overriding the group.

    Args:
        params: tensors, ``model.named_parameters()`` (names then address plans and hooks; unnamed
            parameters are called ``param{i}``) or param-group dicts. Every tensor needs ≥ 2 dims.
        schedule: NS schedule name or :class:`~muonscope.orth.schedules.Schedule`; None uses
            ``ns_coefficients`` (Jordan's by default) as a one-tuple schedule.
        orthogonalizer: "ns", "exact", a registered kind, or an ``Orthogonalizer`` instance.
        momentum_form: "ema" (B ← lerp(B, G, 1−β), torch / Keller Jordan) or "sum" (B ← βB + G).
        ns_dtype: NS compute dtype (None: bf16 on CUDA, fp32 elsewhere).
        split: orthogonalize row blocks separately: an int k (equal blocks, e.g. heads) or a list
            of row counts (e.g. fused QKV ``[d, d, d]``).
        nonfinite: "raise" (``NonFiniteError`` naming the parameters, nothing touched) or "skip"
            (those parameters and their momentum left unchanged; counted in ``stats``).
        ns_steps: steps per NS call, None (the schedule's default) or ``"adaptive"``: per matrix,
            the fewest steps whose failure threshold τ_ρ lies below the monitored s_q
            (``target_q``, ``rho``, at most ``max_steps``; see :mod:`muonscope.optim.adaptive`).
        controllers: extra orthogonalization controllers (e.g. an ``AdaptiveSteps`` with its own
            cadence and hysteresis, used instead of the one ``ns_steps="adaptive"`` builds).
            ``orthogonalizer="hybrid"`` (or a ``HybridNS``) installs a ``HybridControl`` that
            applies its correction policy per matrix. ``stats["layers"]`` holds per-matrix NS FLOPs
            and matrix products (cumulative and last step) of what was actually run and, from the
            last step on which a spectrum was computed (``fidelity_step``), the map's distortion
            D = mean (1 − p(sᵢ))², failed shares below 0.1 and 0.5 and its largest output.
        distributed: None (auto: shard when a process group with > 1 rank is initialized),
            True or False. ``process_group``: the group to shard over (default: WORLD).
            Gradients must already agree across ranks (data-parallel all-reduce); register the
            same hooks on every rank (with DTensor parameters they trigger collectives).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = DEFAULT_NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int | None = None,
        adjust_lr_fn: str | None = None,
        *,
        schedule: str | Schedule | None = None,
        orthogonalizer: str | Orthogonalizer = "ns",
        momentum_form: str = "ema",
        ns_dtype: torch.dtype | str | None = None,
        split: int | Sequence[int] | None = None,
        plan=None,
        nonfinite: str = "raise",
        distributed: bool | None = None,
        process_group=None,
        target_q: float = 0.5,
        rho: float = 0.1,
        max_steps: int | None = None,
        controllers: Sequence = (),
    ) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if isinstance(params, torch.Tensor):
            raise ConfigError("params must be an iterable of tensors, (name, tensor) pairs or dicts")
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
            schedule=schedule, orthogonalizer=orthogonalizer, momentum_form=momentum_form,
            ns_dtype=ns_dtype, split=split,
        )
        self._validate_options(defaults)
        self.nonfinite = nonfinite
        self.plan: Plan | None = load_plan(plan) if plan is not None else None
        self._distributed = distributed
        self._process_group = process_group
        self._init_runtime()
        params = list(params)
        if not params:
            raise ConfigError("Muon got an empty parameter list")
        super().__init__(params, defaults)
        self._setup_controllers(target_q, rho, max_steps, controllers)
        if self.plan is not None:
            names = {name for name, _, _ in self.named_params()}
            unknown = sorted(set(self.plan.params) - names)
            if unknown:
                warnings.warn(f"plan entries match no Muon parameter: {unknown[:5]}"
                              f"{' …' if len(unknown) > 5 else ''}", stacklevel=2)

    def _init_runtime(self) -> None:
        self._orth_hooks: OrderedDict = OrderedDict()
        self._orth_cache: dict = {}
        self._muon_step = 0
        self._controllers: list = []
        self._pending_controller_state: dict = {}
        self.stats = {"steps": 0, "skipped_nonfinite": 0, "ns_matmuls": 0, "ns_flops": 0, "layers": {},
                      "matrices": 0, "last_ns_matmuls": 0, "last_ns_flops": 0,
                      "last_local_ns_flops": 0, "last_skipped_nonfinite": 0, "last_matrices": 0}

    # --- construction and validation ---------------------------------------------------------
    @staticmethod
    def _validate_options(group: dict) -> None:
        """Check and normalize one group's options in place (values stay checkpoint-safe)."""
        lr = group["lr"]
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ConfigError("a tensor lr must have exactly one element")
        if not float(lr) >= 0.0:
            raise ConfigError(f"lr must be >= 0, got {lr}")
        if not float(group["momentum"]) >= 0.0:
            raise ConfigError(f"momentum must be >= 0, got {group['momentum']}")
        if not float(group["weight_decay"]) >= 0.0:
            raise ConfigError(f"weight_decay must be >= 0, got {group['weight_decay']}")
        if not float(group["eps"]) > 0.0:
            raise ConfigError(f"eps must be > 0, got {group['eps']}")
        if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
            raise ConfigError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {group['adjust_lr_fn']!r}")
        if group["momentum_form"] not in MOMENTUM_FORMS:
            raise ConfigError(f"momentum_form must be one of {MOMENTUM_FORMS}, got {group['momentum_form']!r}")
        try:
            coeffs = tuple(float(x) for x in group["ns_coefficients"])
        except (TypeError, ValueError):
            coeffs = ()
        if len(coeffs) != 3 or not all(math.isfinite(x) for x in coeffs):
            raise ConfigError(f"ns_coefficients must be 3 finite numbers (a, b, c), got {group['ns_coefficients']!r}")
        group["ns_coefficients"] = coeffs
        steps = group["ns_steps"]
        if steps is not None and steps != ADAPTIVE and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ConfigError(f"ns_steps must be a positive int, None or 'adaptive', got {steps!r}")
        group["schedule"] = _schedule_value(group["schedule"])
        group["ns_dtype"] = _dtype_name(group["ns_dtype"])
        kind = group["orthogonalizer"]
        if not isinstance(kind, Orthogonalizer):
            make_orthogonalizer(kind, schedule="jordan", steps=1)  # raises ConfigError if unknown
        split = group["split"]
        if split is not None:
            parts = (split,) if isinstance(split, int) else tuple(split)
            if not parts or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in parts):
                raise ConfigError(f"split must be a positive int or a list of positive row counts, got {split!r}")
            group["split"] = split if isinstance(split, int) else list(parts)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate_options(group)
            for p in group["params"]:
                self._check_param(p, group)
        except Exception:
            self.param_groups.pop()
            raise

    @staticmethod
    def _check_param(p: torch.Tensor, group: dict) -> None:
        if p.is_complex():
            raise ConfigError("Muon does not support complex parameters; optimize real and imaginary parts as separate real tensors")
        if p.is_sparse or p.layout != torch.strided and not D.is_dtensor(p):
            raise ConfigError("Muon does not support sparse parameters; give them to a sparse-aware optimizer (e.g. SparseAdam)")
        if p.ndim < 2:
            raise ConfigError(
                f"Muon needs parameters with >= 2 dims, got shape {tuple(p.shape)}; give 1-D parameters "
                "(biases, norms) to AdamW, e.g. with muonscope.MuonWithAdamW or split_params")
        split = group["split"]
        if split is not None:
            rows = p.shape[0]
            if isinstance(split, int) and rows % split:
                raise ConfigError(f"split={split} does not divide the {rows} rows of a parameter of shape {tuple(p.shape)}")
            if not isinstance(split, int) and sum(split) != rows:
                raise ConfigError(f"split={split} sums to {sum(split)}, not to the {rows} rows of shape {tuple(p.shape)}")

    def named_params(self) -> Iterable[tuple[str, torch.Tensor, dict]]:
        """(name, parameter, group) for every parameter; unnamed ones are ``param{i}``."""
        i = 0
        for group in self.param_groups:
            names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                yield (names[j] if names is not None else f"param{i}"), p, group
                i += 1

    # --- hooks -------------------------------------------------------------------------------
    def register_orth_hook(self, hook) -> RemovableHandle:
        """Call ``hook.wants_spectrum(step)`` once per step and ``hook.on_orthogonalize(event)``
        per orthogonalized matrix. Returns a handle with ``.remove()``."""
        if not (callable(getattr(hook, "wants_spectrum", None))
                and callable(getattr(hook, "on_orthogonalize", None))):
            raise ConfigError("an orth hook needs wants_spectrum(step) and on_orthogonalize(event) methods")
        handle = RemovableHandle(self._orth_hooks)
        self._orth_hooks[handle.id] = hook
        return handle

    # --- per-parameter orthogonalizer ----------------------------------------------------------
    def orthogonalizer_for(self, name: str, group: dict) -> tuple[Orthogonalizer, tuple]:
        """The orthogonalizer (and its cache key) for parameter ``name`` in ``group``."""
        dtype = group["ns_dtype"]
        eps = float(group["eps"])
        pp = self.plan.for_param(name) if self.plan is not None else None
        if pp is not None:
            kind, sched, steps = pp.orthogonalizer, pp.schedule, pp.steps
        else:
            kind = group["orthogonalizer"]
            if isinstance(kind, Orthogonalizer):
                return kind, ("instance", id(kind))
            sched = group["schedule"]
            if sched is None:
                coeffs = tuple(group["ns_coefficients"])
                sched = get_schedule("jordan") if coeffs == JORDAN else Schedule("custom", (coeffs,))
            elif isinstance(sched, dict):
                sched = Schedule.from_dict(sched)
            else:
                sched = get_schedule(sched)
            steps = group["ns_steps"] if group["ns_steps"] not in (None, ADAPTIVE) else sched.default_steps
        key = (kind, dtype) if kind == "exact" else (kind, sched, steps, dtype, eps)
        orth = self._orth_cache.get(key)
        if orth is None:
            orth = make_orthogonalizer(kind, schedule=sched, steps=steps, eps=eps,
                                       dtype=getattr(torch, dtype) if dtype else None)
            self._orth_cache[key] = orth
        return orth, key

    # --- controllers ---------------------------------------------------------------------------
    def _setup_controllers(self, target_q, rho, max_steps, controllers) -> None:
        extra = list(controllers or ())
        if any(g["ns_steps"] == ADAPTIVE for g in self.param_groups) and not any(
                isinstance(c, AdaptiveSteps) for c in extra):
            extra.insert(0, AdaptiveSteps(target_q, rho, max_steps))
        kinds = [g["orthogonalizer"] for g in self.param_groups]
        if self.plan is not None:
            kinds += [pp.orthogonalizer for pp in [*self.plan.params.values(), self.plan.default] if pp is not None]
        hybrids = [k for k in kinds if isinstance(k, HybridNS) or k == "hybrid"]
        if hybrids and not any(isinstance(c, HybridControl) for c in extra):
            extra.append(HybridControl(bounded=any(not isinstance(k, HybridNS) or k.bound is not None for k in hybrids)))
        for c in extra:
            self.add_controller(c)

    def add_controller(self, controller) -> None:
        """Ask ``controller.select(name, step, orth, group)`` for every matrix before each step's
        orthogonalization (in order of addition); it is also registered as an orth hook."""
        if not (callable(getattr(controller, "select", None)) and callable(getattr(controller, "wants_spectrum", None))
                and callable(getattr(controller, "on_orthogonalize", None))):
            raise ConfigError("a controller needs select(name, step, orth, group), wants_spectrum(step) and "
                              "on_orthogonalize(event) methods")
        state = self._pending_controller_state.pop(type(controller).__name__, None)
        if state is not None and callable(getattr(controller, "load_state_dict", None)):
            controller.load_state_dict(state)
        self._controllers.append(controller)
        self.register_orth_hook(controller)

    def _control(self, name: str, orth: Orthogonalizer, key: tuple, group: dict) -> tuple[Orthogonalizer, tuple]:
        if isinstance(orth, HybridNS) and not any(isinstance(c, HybridControl) for c in self._controllers):
            self.add_controller(HybridControl())
        for c in self._controllers:
            new = c.select(name, self._muon_step + 1, orth, group)
            if new is not orth:
                orth, key = new, ("controlled", id(new))  # controllers keep their instances alive
        return orth, key

    # --- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One Muon step over every parameter with a gradient. Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ctx = D.DistContext.detect(self._process_group, self._distributed)
        if ctx and not all(getattr(c, "distributed_safe", False) for c in self._controllers):
            raise ConfigError("adaptive steps and failed-share-triggered hybrid correction decide from spectra "
                              "seen on one rank; use them in single-process training (or hybrid with bound=None)")
        items = self._screen_nonfinite(self._collect(), ctx)
        step_no = self._muon_step + 1
        want = False
        for hook in list(self._orth_hooks.values()):
            want = bool(hook.wants_spectrum(step_no)) or want
        works = self._momentum_and_matrices(items)

        owners = D.assign_owners([w.flops for w in works], ctx.world) if ctx else [0] * len(works)
        rank = ctx.rank if ctx else 0
        local = [w for w, r in zip(works, owners, strict=True) if r == rank]
        self._orthogonalize(local, want, retain=bool(self._orth_hooks))
        if self._orth_hooks:
            for w in local:
                w.momentum = w.momentum if w.momentum is not None else (w.source[1] if w.source else None)
                event = OrthEvent(name=w.name, param=w.item.param, step=step_no, matrix=w.matrix,
                                  momentum=w.momentum, spectrum=w.spectrum, orthogonalizer=w.orth,
                                  update=w.update, process_rank=rank)
                for hook in list(self._orth_hooks.values()):
                    hook.on_orthogonalize(event)
        if ctx:
            ups = D.all_gather_updates(
                [w.update for w in works], [w.shape for w in works],
                [w.dtype for w in works], [w.device for w in works], owners, ctx)
            for w, u in zip(works, ups, strict=True):
                w.update = u
        self._apply(works)

        st = self.stats
        flops = sum(w.flops for w in works)
        mm = sum(w.orth.matmuls() for w in works)
        st.update(steps=st["steps"] + 1, ns_flops=st["ns_flops"] + flops, ns_matmuls=st["ns_matmuls"] + mm,
                  matrices=st["matrices"] + len(works), last_ns_flops=flops, last_ns_matmuls=mm,
                  last_local_ns_flops=sum(w.flops for w in local), last_matrices=len(works))
        layers = st.setdefault("layers", {})
        for w in works:
            e = layers.setdefault(w.name, {"ns_flops": 0, "ns_matmuls": 0})
            wm = w.orth.matmuls()
            e.update(ns_flops=e["ns_flops"] + w.flops, ns_matmuls=e["ns_matmuls"] + wm, last_ns_flops=w.flops,
                     last_ns_matmuls=wm, last_orthogonalizer="{}x{}".format(*w.orth.label))
            if w.spectrum is not None and w.spectrum.numel():  # sampled step: fidelity of the map used
                sv = w.spectrum.detach().cpu().numpy()
                fid = fidelity_stats(sv, np.asarray(w.orth.scalar_map(sv), dtype=np.float64))
                e.update({k: fid[k] for k in FIDELITY_KEYS}, fidelity_step=step_no)
        self._muon_step = step_no
        return loss

    def _collect(self) -> list[_Item]:
        items = []
        for name, p, group in self.named_params():
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise ConfigError(f"parameter {name!r} has a sparse gradient; Muon needs dense gradients")
            items.append(_Item(p, g, group, name))
        return items

    def _screen_nonfinite(self, items: list[_Item], ctx) -> list[_Item]:
        self.stats["last_skipped_nonfinite"] = 0
        if not items:
            return items
        bad = nonfinite_mask([it.grad for it in items], ctx)
        if not any(bad):
            return items
        names = [it.name for it, b in zip(items, bad, strict=True) if b]
        if self.nonfinite == "raise":
            raise NonFiniteError(
                f"non-finite gradient (NaN/Inf) in {len(names)} parameter(s): {', '.join(names[:5])}"
                f"{' …' if len(names) > 5 else ''}; nothing was updated. Check the loss and lr, "
                "or construct the optimizer with nonfinite='skip'")
        self.stats["skipped_nonfinite"] += len(names)
        self.stats["last_skipped_nonfinite"] = len(names)
        return [it for it, b in zip(items, bad, strict=True) if not b]

    def _momentum_and_matrices(self, items: list[_Item]) -> list[_Work]:
        works: list[_Work] = []
        by_group: dict[int, list[_Item]] = {}
        for it in items:
            by_group.setdefault(id(it.group), []).append(it)
        for group_items in by_group.values():
            group = group_items[0].group
            beta = float(group["momentum"])
            grads = [it.grad for it in group_items]
            bufs = []
            for it in group_items:
                state = self.state[it.param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(it.grad, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            _momentum_(bufs, grads, beta, group["momentum_form"])
            for it, buf in zip(group_items, bufs, strict=True):
                works.extend(self._works_for(it, buf))
        return works

    def _works_for(self, it: _Item, buf: torch.Tensor) -> list[_Work]:
        group = it.group
        beta, nesterov, form = float(group["momentum"]), bool(group["nesterov"]), group["momentum_form"]
        if D.is_dtensor(buf):  # gathering is a collective: every rank forms the full matrix now
            x = ns_input(it.grad, buf, beta, nesterov, form)
            X = D.full_tensor(x)
            M = X if x is buf else (D.full_tensor(buf) if self._orth_hooks else None)
            X2, G2 = X.flatten(1), None
            M2 = M.flatten(1) if M is not None else None
        else:
            X2, G2, M2 = None, it.grad.flatten(1), buf.flatten(1)
        rows = it.param.shape[0]
        cols = math.prod(it.param.shape[1:])
        orth, key = self.orthogonalizer_for(it.name, group)
        split = group["split"]
        if split is None:
            blocks = [(it.name, None)]
        else:
            sizes = [rows // split] * split if isinstance(split, int) else list(split)
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            blocks = [(f"{it.name}[block {i}]", slice(s, s + k))
                      for i, (s, k) in enumerate(zip(starts, sizes, strict=True))]
        out = []
        def rows_of(t):
            return None if t is None else (t if sl is None else t[sl])

        for name, sl in blocks:
            r = rows if sl is None else sl.stop - sl.start
            Xb, Mb = rows_of(X2), rows_of(M2)
            source = None if G2 is None else (rows_of(G2), Mb, beta, nesterov, form)
            orth_b, key_b = self._control(name, orth, key, group)
            dev, dt = it.grad.device, (Xb.dtype if Xb is not None else buf.dtype)
            cdt = (orth_b.dtype or default_compute_dtype(dev)) if isinstance(orth_b, NewtonSchulz) else dt
            out.append(_Work(it, name, Xb, Mb, sl, orth_b, key_b, int(orth_b.flops(r, cols)),
                             lr_ratio(group["adjust_lr_fn"], r, cols), cdt, torch.Size((r, cols)), dev, source))
        return out

    @staticmethod
    def _orthogonalize(works: list[_Work], want_spectrum: bool, retain: bool = False) -> None:
        """Fill ``update`` (and ``spectrum``): one batched call per (orthogonalizer, shape) bucket.

        With ``retain`` each work keeps its NS input in ``matrix`` (for hooks)."""
        buckets: dict[tuple, list[tuple[_Work, bool]]] = {}
        for w in works:
            m, n = w.shape
            if m * n == 0:  # nothing to orthogonalize
                w.update = torch.zeros(w.shape, dtype=w.dtype, device=w.device)
                w.spectrum = torch.zeros(min(m, n), dtype=torch.float64) if want_spectrum else None
                if retain:
                    w.matrix = w.materialize()
                continue
            key = (w.key, min(m, n), max(m, n), w.dtype, w.device)
            buckets.setdefault(key, []).append((w, m > n))
        for bucket in buckets.values():
            orth = bucket[0][0].orth
            # NS casts its input to the compute dtype first: cast here instead (while stacking) and
            # keep the update in that dtype, as torch.optim.Muon does; the parameter update adds it
            # in the parameter's dtype.
            first, cdt = bucket[0][0], bucket[0][0].dtype
            if retain:  # hooks see each NS input as formed, in its own dtype
                for w, _ in bucket:
                    w.matrix = w.materialize()
            if len(bucket) == 1:
                X = first.matrix
                if X is None and (not first.source[3] or first.source[0].dtype == cdt):
                    X = first.materialize()  # the momentum view itself, or formed in its dtype
                if X is None or X.dtype != cdt:
                    X = torch.empty(first.shape, dtype=cdt, device=first.device)
                    first.materialize_into(X)
                first.update, first.spectrum = orth(X, want_spectrum=want_spectrum)
            else:
                m, n = first.shape[::-1] if bucket[0][1] else first.shape
                G = torch.empty((len(bucket), m, n), dtype=cdt, device=first.device)
                for i, (w, t) in enumerate(bucket):
                    w.materialize_into(G[i].mT if t else G[i])
                O, S = orth(G, want_spectrum=want_spectrum)
                for i, (w, t) in enumerate(bucket):
                    w.update = O[i].mT if t else O[i]
                    w.spectrum = S[i] if S is not None else None
            if want_spectrum:
                for w, _ in bucket:
                    if w.spectrum is not None:
                        w.spectrum = w.spectrum.to(torch.float64)

    def _apply(self, works: list[_Work]) -> None:
        """W ← W·(1 − lr·wd) − lr·scale·O on each parameter's local data."""
        by_param: dict[int, list[_Work]] = {}
        for w in works:
            by_param.setdefault(id(w.item.param), []).append(w)
        for pw in by_param.values():
            it = pw[0].item
            p, group = it.param, it.group
            lr = float(group["lr"])
            wd = float(group["weight_decay"])
            local = D.local_part(p)
            if wd != 0.0:
                local.mul_(1 - lr * wd)
            if pw[0].rows is None:
                w = pw[0]
                U = D.shard_like(w.update.reshape(p.shape), p)
                local.add_(U, alpha=-(lr * w.lr_ratio))
            elif not D.is_dtensor(p) and p.is_contiguous():
                view = p.flatten(1)
                for w in pw:
                    view[w.rows].add_(w.update, alpha=-(lr * w.lr_ratio))
            else:
                U = torch.cat([w.update.to(p.dtype) * w.lr_ratio for w in pw]).reshape(p.shape)
                local.add_(D.shard_like(U, p), alpha=-lr)

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """torch's optimizer state dict plus ``"muonscope": {"step", "stats"}``; weights_only-safe."""
        sd = super().state_dict()
        for g in sd["param_groups"]:
            if isinstance(g.get("orthogonalizer"), Orthogonalizer):
                g["orthogonalizer"] = g["orthogonalizer"].kind
        sd["muonscope"] = {"step": self._muon_step, "stats": dict(self.stats), "controllers": {
            type(c).__name__: c.state_dict() for c in self._controllers if callable(getattr(c, "state_dict", None))}}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict from :meth:`state_dict` (or from ``torch.optim.Muon``: missing options
        take this optimizer's defaults)."""
        sd = dict(state_dict)
        extra = sd.pop("muonscope", None)
        before = [dict(g) for g in self.param_groups]
        super().load_state_dict(sd)
        for g, old in zip(self.param_groups, before, strict=True):
            for k, v in self.defaults.items():
                g.setdefault(k, v)
            if isinstance(old["orthogonalizer"], Orthogonalizer) and g["orthogonalizer"] == old["orthogonalizer"].kind:
                g["orthogonalizer"] = old["orthogonalizer"]
            self._validate_options(g)
        if extra:
            self._muon_step = int(extra.get("step", 0))
            self.stats.update(extra.get("stats", {}))
            self._pending_controller_state.update(extra.get("controllers", {}))
            for c in self._controllers:
                state = self._pending_controller_state.pop(type(c).__name__, None)
                if state is not None and callable(getattr(c, "load_state_dict", None)):
                    c.load_state_dict(state)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update(nonfinite=self.nonfinite, plan=self.plan, _distributed=self._distributed,
                     _muon_step=self._muon_step, stats=dict(self.stats), controllers=list(self._controllers))
        return state

    def __setstate__(self, state: dict) -> None:
        if "defaults" not in state:  # torch's load_state_dict passes only state and param_groups
            super().__setstate__(state)  # keep hooks, controllers and stats (load_state_dict restores them)
            return
        step, stats = state.pop("_muon_step", 0), state.pop("stats", None)
        controllers = state.pop("controllers", [])
        super().__setstate__(state)
        self.__dict__.setdefault("nonfinite", "raise")
        self.__dict__.setdefault("plan", None)
        self.__dict__.setdefault("_distributed", None)
        self._process_group = None
        self._init_runtime()
        self._muon_step = step
        if stats:
            self.stats.update(stats)
        for c in controllers:
            self.add_controller(c)


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


def ns_input(g: torch.Tensor, b: torch.Tensor, beta: float, nesterov: bool, form: str) -> torch.Tensor:
    """The NS input from gradient and (updated) momentum: B itself, or with Nesterov
    lerp(G, B, β) ("ema") / G + β·B ("sum")."""
    if not nesterov:
        return b
    return g.lerp(b, beta) if form == "ema" else g.add(b, alpha=beta)


def _momentum_(bufs: list[torch.Tensor], grads: list[torch.Tensor], beta: float, form: str) -> None:
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
