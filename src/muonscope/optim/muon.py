"""Muon: the stateful ``torch.optim.Optimizer`` shell over the functional step.

State, configuration and math are separate: :mod:`muonscope.optim.functional` holds the math
(momentum, NS input, batched orthogonalization, parameter update), :mod:`muonscope.optim.policy`
decides which orthogonalizer each matrix gets, :mod:`muonscope.optim.distributed` decides which
rank orthogonalizes what and gathers the results, and this class keeps param groups, state,
hooks, statistics and checkpoints. One step reads::

    grads → screen NaN/Inf → momentum → one Work per matrix (its orthogonalizer from the policies)
          → this rank's share → orthogonalize (batched) → tell the hooks → gather → apply → account
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from muonscope import validate as V
from muonscope.conventions import FAILURE_RHO
from muonscope.errors import (
    ConfigError,
    MuonscopeError,
    NonFiniteError,
    ParamTypeError,
    UnsupportedParamError,
)
from muonscope.optim import distributed as D
from muonscope.optim import functional as F
from muonscope.optim.adaptive import AdaptiveSteps, HybridControl, check_adaptive_options
from muonscope.optim.functional import ADJUST_LR_FNS, MOMENTUM_FORMS, lr_ratio, nonfinite_mask
from muonscope.optim.hooks import OrthEvent
from muonscope.optim.layout import align_state_dict
from muonscope.optim.plan import Plan, load_plan
from muonscope.optim.policy import ADAPTIVE, check_policy, configured, policy_key
from muonscope.optim.views import canonical_name, check_view, matrices, matrix_shape, resolve
from muonscope.orth.analysis import fidelity_stats
from muonscope.orth.hybrid import HybridNS
from muonscope.orth.orthogonalizers import (
    AutoNewtonSchulz,
    GramNewtonSchulz,
    NewtonSchulz,
    Orthogonalizer,
    make_orthogonalizer,
)
from muonscope.orth.schedules import JORDAN, Schedule, get_schedule

DEFAULT_NS_COEFFICIENTS = JORDAN
MOMENTUM_LIMIT = 1e30  # a momentum norm above this freezes its matrix: NS normalization divides by it
NONFINITE_POLICIES = ("raise", "skip")
OPTION_KEYS = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn",
               "schedule", "orthogonalizer", "momentum_form", "ns_dtype", "split")
STRUCTURAL_KEYS = ("nesterov", "ns_coefficients", "ns_steps", "adjust_lr_fn", "schedule", "orthogonalizer",
                   "momentum_form", "ns_dtype", "split")  # re-validated at step() when they change
FIDELITY_KEYS = ("distortion", "frac_failed", "frac_failed_50", "ns_out_max")  # in stats["layers"] on sampled steps
__all__ = ["ADJUST_LR_FNS", "DEFAULT_NS_COEFFICIENTS", "FIDELITY_KEYS", "MOMENTUM_FORMS", "Muon",
           "NONFINITE_POLICIES", "lr_ratio", "nonfinite_mask"]


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


class Muon(Optimizer):
    """Muon with per-group and per-parameter orthogonalization (a ``torch.optim.Optimizer``).

    Arguments shared with ``torch.optim.Muon`` mean the same and default the same (``ns_steps=None``
    means the schedule's default, 5 for Jordan's coefficients). Every option below may also be set
    per param group; a ``plan`` (dict, JSON path or :class:`~muonscope.optim.plan.Plan`) sets
    schedule and steps per parameter name, overriding the group.

    Args:
        params: tensors, ``model.named_parameters()`` (names then address plans and hooks; unnamed
            parameters are called ``param{i}``; ``torch.compile``'s ``_orig_mod.`` prefixes are
            dropped) or param-group dicts. Every tensor needs ≥ 2 dims.
        schedule: NS schedule name or :class:`~muonscope.orth.schedules.Schedule`; None uses
            ``ns_coefficients`` (Jordan's by default) as a one-tuple schedule.
        orthogonalizer: "ns", "exact", a registered kind, or an ``Orthogonalizer`` instance.
        momentum_form: "ema" (B ← lerp(B, G, 1−β), torch / Keller Jordan) or "sum" (B ← βB + G).
        ns_dtype: NS compute dtype. None: bf16 where bf16 products are fast (CUDA; a CPU with
            native bf16 matrix instructions or whose bf16 GEMM times at least as fast as fp32, probed
            once per process), else fp32; ``MUONSCOPE_NS_DTYPE`` overrides the default. Gram NS
            (``orthogonalizer="gram"``/``"auto"``) uses fp16 on CUDA. Spectra on sampled steps are
            always computed in fp32 or better.
        split: orthogonalize row blocks separately: an int k (equal blocks, e.g. heads) or a list
            of row counts (e.g. fused QKV ``[d, d, d]``); rows of each (out, in) matrix of the view.
        views: {parameter name or regex: matrix view} (:mod:`muonscope.optim.views`): how a
            parameter is read as a batch of (out, in) matrices: "matrix", "transposed" (HF
            ``Conv1D``), "flatten" (conv kernels), "experts" ((E, out, in) expert stacks, one
            matrix per expert), "experts_t" ((E, in, out)). Undeclared ones are inferred from
            name and shape; ``views=infer_views(model)`` reads them from the module structure.
        nonfinite: "raise" (``NonFiniteError`` naming the parameters, nothing touched) or "skip"
            (those parameters and their momentum left unchanged; counted in ``stats``).
        ns_steps: steps per NS call, None (the schedule's default) or ``"adaptive"``: per matrix,
            the fewest steps whose failure threshold τ_ρ lies below the monitored s_q
            (``target_q``, ``rho``, at most ``max_steps``; see :mod:`muonscope.optim.adaptive`).
        policies: orthogonalization policies (:mod:`muonscope.optim.policy`), asked in order
            which orthogonalizer each matrix gets, e.g. an ``AdaptiveSteps`` with its own cadence
            and hysteresis (used instead of the one ``ns_steps="adaptive"`` installs);
            ``orthogonalizer="hybrid"`` (or a ``HybridNS``) installs a ``HybridControl``.
            ``controllers`` is the former name of this argument. ``stats["layers"]`` holds per-matrix NS FLOPs
            and matrix products (cumulative and last step) of what was actually run and, from the
            last step on which a spectrum was computed (``fidelity_step``), the map's distortion
            D = mean (1 − p(sᵢ))², failed shares below 0.1 and 0.5 and its largest output.
        distributed: None (auto: shard when a process group with > 1 rank is initialized),
            True or False. ``process_group``: the group to shard over (default: WORLD).
            Gradients must already agree across ranks (data-parallel all-reduce); register the
            same hooks on every rank (with DTensor parameters they trigger collectives). Before
            every sharded step the ranks compare a hash of names, shapes, dtypes, views, groups
            and which parameters have a gradient; a difference raises the same
            ``DistributedMismatchError`` on every rank.

    Numeric options are validated at construction and again before every step (values set on a
    group later, e.g. by a scheduler): lr ∈ [0, 1e6] (float or 1-element tensor), momentum ∈
    [0, 1), weight_decay ≥ 0 with lr·weight_decay ≤ 1, eps ∈ (0, 1], ns_steps ≤ 100, NS
    coefficients within ±1e4, all finite (``ConfigError``, a ``ValueError``, before anything is
    touched). A tensor listed twice is refused. ``stats`` counts matrices whose update was
    exactly zero although their momentum was not (``zero_updates``: the NS normalization
    overflowed), whose update was not finite (``nonfinite_updates``: replaced by zeros) or whose
    momentum norm exceeded 1e30 (``huge_momentum``), in total, on the last step (``last_*``) and
    per matrix in ``stats["layers"]``; each parameter is warned about once.
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
        rho: float = FAILURE_RHO,
        max_steps: int | None = None,
        policies: Sequence = (),
        controllers: Sequence = (),
        views: dict[str, str] | None = None,
    ) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if distributed is not None and not isinstance(distributed, bool):
            raise ConfigError(f"distributed must be None (auto), True or False, got {distributed!r}")
        check_adaptive_options(target_q, rho, max_steps)
        if isinstance(params, torch.Tensor):
            raise ParamTypeError("params argument given to the optimizer should be an iterable of Tensors or "
                                 f"dicts, but got {torch.typename(params)}; pass [tensor] or model.parameters()")
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
            schedule=schedule, orthogonalizer=orthogonalizer, momentum_form=momentum_form,
            ns_dtype=ns_dtype, split=split,
        )
        self._validate_options(defaults)
        self.nonfinite = nonfinite
        self.plan: Plan | None = load_plan(plan) if plan is not None else None
        for entry in [*self.plan.params.values(), self.plan.default] if self.plan is not None else ():
            if entry is not None:  # an unknown orthogonalizer kind fails here, not at the first step
                V.ns_coefficients(f"plan schedule {entry.schedule.name!r}", entry.schedule.coefficients)
                make_orthogonalizer(entry.orthogonalizer, schedule=entry.schedule, steps=entry.steps,
                                    restarts=entry.restarts)
        self._distributed = distributed
        self._process_group = process_group
        if views is not None and not isinstance(views, Mapping):
            raise ConfigError(f"views must map parameter names (or regexes) to matrix views, got {views!r}")
        if not all(isinstance(k, str) for k in (views or {})):
            raise ConfigError(f"views keys must be parameter names or regexes, got {list(views)!r}")
        try:
            if any(isinstance(s, (str, bytes, Mapping, torch.Tensor)) for s in (policies, controllers)):
                raise TypeError
            policies, controllers = list(policies), list(controllers)
        except TypeError:
            raise ConfigError(f"policies must be a list of policies, got {policies!r}") from None
        self.views = {canonical_name(k): check_view(v) for k, v in (views or {}).items()}
        self._view_cache: dict[str, str] = {}
        self._init_runtime()
        params = list(params)
        if not params:
            raise ConfigError("Muon got an empty parameter list")
        super().__init__(params, defaults)
        self._adaptive_options = (target_q, rho, max_steps)  # for AdaptiveSteps installed later
        self._install_policies(target_q, rho, max_steps, [*policies, *controllers])
        self._constructed = True
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
        self._policies: list = []
        self._pending_policy_state: dict = {}
        self._ranks_checked = None  # the parameter layout whose signature is in self._layout
        self._layout: tuple = ([], 0, 0)  # (signature rows, their digest, version)
        self._layout_verified_for = 0  # a step whose layout a MuonWithAdamW compared already
        self._validated: dict[int, tuple] = {}  # id(group) -> (group, its options and params as last checked)
        self._warned: set[str] = set()  # parameters warned about a zero or frozen update
        self.stats = {"steps": 0, "skipped_nonfinite": 0, "ns_matmuls": 0, "ns_flops": 0, "layers": {},
                      "matrices": 0, "last_ns_matmuls": 0, "last_ns_flops": 0,
                      "last_local_ns_flops": 0, "last_skipped_nonfinite": 0, "last_matrices": 0,
                      "zero_updates": 0, "last_zero_updates": 0, "nonfinite_updates": 0,
                      "last_nonfinite_updates": 0, "huge_momentum": 0, "last_huge_momentum": 0}

    # --- construction and validation ---------------------------------------------------------
    @staticmethod
    def _validate_options(group: dict) -> None:
        """Check and normalize one group's options in place (values stay checkpoint-safe)."""
        Muon._check_scalars(group)
        if not isinstance(group["nesterov"], (bool, np.bool_)):
            raise ConfigError(f"nesterov must be True or False, got {group['nesterov']!r}")
        group["nesterov"] = bool(group["nesterov"])
        if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
            raise ConfigError(f"Adjust learning rate function {group['adjust_lr_fn']} is not supported; "
                              f"adjust_lr_fn must be one of {ADJUST_LR_FNS}")
        if group["momentum_form"] not in MOMENTUM_FORMS:
            raise ConfigError(f"momentum_form must be one of {MOMENTUM_FORMS}, got {group['momentum_form']!r}")
        try:
            coeffs = tuple(float(x) for x in group["ns_coefficients"])
        except (TypeError, ValueError):
            coeffs = ()
        if len(coeffs) != 3 or not all(math.isfinite(x) for x in coeffs):
            raise ConfigError(f"ns_coefficients must be 3 finite numbers (a, b, c), got {group['ns_coefficients']!r}")
        group["ns_coefficients"] = coeffs
        V.ns_coefficients("ns_coefficients", [coeffs])
        try:
            group["schedule"] = _schedule_value(group["schedule"])
        except MuonscopeError:
            raise
        except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:
            raise ConfigError(f"schedule must be a schedule name, a Schedule or its dict, got "
                              f"{group['schedule']!r}: {exc}") from exc
        sched = group["schedule"]
        if sched is not None and group["ns_steps"] in (None, ADAPTIVE):  # its default steps are run
            sched = Schedule.from_dict(sched) if isinstance(sched, dict) else get_schedule(sched)
            V.ns_steps(f"default_steps of schedule {sched.name!r}", sched.default_steps)
        if group["schedule"] is not None:
            sched = group["schedule"]
            sched = Schedule.from_dict(sched) if isinstance(sched, dict) else get_schedule(sched)
            V.ns_coefficients(f"schedule {sched.name!r}", sched.coefficients)
        group["ns_dtype"] = _dtype_name(group["ns_dtype"])
        kind = group["orthogonalizer"]
        if not isinstance(kind, (str, Orthogonalizer)):
            raise ConfigError(f"orthogonalizer must be a kind name or an Orthogonalizer instance, got {kind!r}")
        if not isinstance(kind, Orthogonalizer):
            make_orthogonalizer(kind, schedule="jordan", steps=1)  # raises ConfigError if unknown
        for ns in (kind, getattr(kind, "bulk", None)):
            if isinstance(ns, NewtonSchulz):
                V.ns_steps("the orthogonalizer's NS steps", ns.steps)
                V.ns_coefficients(f"schedule {ns.schedule.name!r}", ns.schedule.coefficients)
        split = group["split"]
        if split is not None:
            try:
                parts = (split,) if isinstance(split, int) else tuple(split)
            except TypeError:
                parts = ()
            if not parts or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > V.MAX_COUNT
                                for k in parts):
                raise ConfigError(f"split must be a positive int or a list of positive row counts, got {split!r}")
            group["split"] = split if isinstance(split, int) else list(parts)

    @staticmethod
    def _check_scalars(group: dict) -> None:
        """The numbers a step reads: lr ≥ 0 (a float or 1-element tensor), momentum β ∈ [0, 1),
        weight_decay ≥ 0 with lr·weight_decay ≤ 1 (the decay factor 1 − lr·wd stays in [0, 1]),
        eps ∈ (0, 1], all finite, and ns_steps None, "adaptive" or an int in [1, MAX_NS_STEPS]. Checked
        at construction and again before every step (schedulers and users edit groups); cheap."""
        lr = group["lr"]
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ConfigError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
        for key in ("lr", "momentum", "weight_decay", "eps"):
            if isinstance(group[key], (str, bytes)):
                raise ConfigError(f"{key} must be a number, got {group[key]!r}")
        lr = V.learning_rate("lr", lr)
        V.real("momentum", group["momentum"], low=0.0, high=1.0, high_open=True)
        wd = V.nonnegative("weight_decay", group["weight_decay"])
        if lr * wd > 1.0:
            raise ConfigError(f"lr * weight_decay must be <= 1 (weights are scaled by 1 - lr * weight_decay each "
                              f"step), got lr={lr:g}, weight_decay={wd:g}")
        V.real("eps", group["eps"], low=0.0, high=1.0, low_open=True)
        steps = group["ns_steps"]
        if steps is not None and steps != ADAPTIVE:
            if isinstance(steps, bool) or not isinstance(steps, int):
                raise ConfigError(f"ns_steps must be a positive int, None or 'adaptive', got {steps!r}")
            V.ns_steps("ns_steps", steps)

    def _revalidate(self) -> None:
        """Check every group before a step: the scalars always (cheap), the other options and
        the parameter list only when they changed since last checked (then in full, with
        normalized values written back). Raises before anything is touched."""
        changed = False
        for group in self.param_groups:
            self._check_scalars(group)
            now = (repr([group.get(k) for k in STRUCTURAL_KEYS]), tuple(map(id, group["params"])))
            seen = self._validated.get(id(group))
            if seen is not None and seen[0] is group and seen[1] == now:
                continue
            trial = dict(group)
            self._validate_options(trial)
            for name, p, g in self.named_params():
                if g is group:
                    self._check_param(name, p, trial)
            for k in STRUCTURAL_KEYS:
                group[k] = trial[k]
            changed = True
        if changed:
            self._ranks_checked = None  # options in the signature (split) may have changed
            ids = [id(p) for g in self.param_groups for p in g["params"]]
            if len(ids) != len(set(ids)):
                raise ConfigError("a parameter is listed twice in the param groups (it would be updated twice "
                                  "per step); list each parameter once")
            self._validated = {id(g): (g, (repr([g.get(k) for k in STRUCTURAL_KEYS]), tuple(map(id, g["params"]))))
                               for g in self.param_groups}

    def add_param_group(self, param_group: dict) -> None:
        self._refuse_duplicates(param_group)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate_options(group)
            start = sum(len(g["params"]) for g in self.param_groups[:-1])
            names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                self._check_param(names[j] if names is not None else f"param{start + j}", p, group)
        except Exception:
            self.param_groups.pop()
            raise
        if getattr(self, "_constructed", False):  # a group added later may need a policy too
            self._install_policies(*self._adaptive_options, [])

    def _refuse_duplicates(self, param_group) -> None:
        """The same tensor twice would be updated twice per step: refuse it within a group (torch
        only warns) and across groups (torch's ValueError, as a ConfigError naming it)."""
        if not isinstance(param_group, dict):
            return  # torch raises its TypeError
        params = param_group.get("params")
        if params is None or isinstance(params, (torch.Tensor, set)):
            return
        param_group["params"] = params = list(params)
        seen: dict[int, int] = {}
        for j, p in enumerate(params):
            t = p[1] if isinstance(p, tuple) and len(p) == 2 else p
            if not isinstance(t, torch.Tensor):
                continue
            if id(t) in seen:
                label = repr(p[0]) if isinstance(p, tuple) else f"entry {j}"
                raise ConfigError(f"optimizer contains a parameter group with duplicate parameters: {label} is "
                                  f"entry {seen[id(t)]} too; it would be updated twice per step, list it once")
            seen[id(t)] = j
            for gi, g in enumerate(self.param_groups):
                if any(q is t for q in g["params"]):
                    label = repr(p[0]) if isinstance(p, tuple) else f"entry {j}"
                    raise ConfigError(f"some parameters appear in more than one parameter group: {label} is in "
                                      f"group {gi} already; list each parameter once")

    def _check_param(self, name: str, p: torch.Tensor, group: dict) -> None:
        if p.is_sparse or p.layout != torch.strided and not D.is_dtensor(p):
            raise ConfigError("Muon does not support sparse parameters; give them to a sparse-aware optimizer (e.g. SparseAdam)")
        if p.ndim < 2:
            raise ConfigError(
                f"Muon only supports 2D parameters (and > 2-D ones read as matrices), got shape "
                f"{tuple(p.shape)}; give 1-D parameters (biases, norms) to AdamW, e.g. with "
                "muonscope.MuonWithAdamW or split_params")
        _, rows, _ = matrix_shape(self.view_of(name, p), p.shape)
        split = group["split"]
        if split is not None:
            if isinstance(split, int) and rows % split:
                raise ConfigError(f"split={split} does not divide the {rows} rows (out features) of {name!r}, shape {tuple(p.shape)}")
            if not isinstance(split, int) and sum(split) != rows:
                raise ConfigError(f"split={split} sums to {sum(split)}, not to the {rows} rows (out features) of {name!r}, shape {tuple(p.shape)}")

    def view_of(self, name: str, p: torch.Tensor) -> str:
        """The matrix view of parameter ``name`` (:func:`muonscope.optim.views.resolve`, cached)."""
        view = self._view_cache.get(name)
        if view is None:
            view = self._view_cache[name] = resolve(name, p.shape, self.views)
        return view

    def named_params(self) -> Iterable[tuple[str, torch.Tensor, dict]]:
        """(name, parameter, group) for every parameter; unnamed ones are ``param{i}``."""
        i = 0
        for group in self.param_groups:
            names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                yield (canonical_name(names[j]) if names is not None else f"param{i}"), p, group
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
        """The configured orthogonalizer (and its cache key) for parameter ``name`` in ``group``:
        its plan entry, else the group's options (policies may still replace it per step)."""
        return configured(name, group, self.plan, self._orth_cache)

    # --- policies --------------------------------------------------------------------------------
    def _install_policies(self, target_q, rho, max_steps, extra) -> None:
        """Add ``extra`` and the policies the configuration needs: ``AdaptiveSteps`` for groups
        with ``ns_steps="adaptive"``, ``HybridControl`` when a hybrid orthogonalizer may run."""
        extra = list(extra)
        have = [*self._policies, *extra]
        if any(g["ns_steps"] == ADAPTIVE for g in self.param_groups) and not any(
                isinstance(c, AdaptiveSteps) for c in have):
            extra.insert(0, AdaptiveSteps(target_q, rho, max_steps))
        kinds = [g["orthogonalizer"] for g in self.param_groups]
        if self.plan is not None:
            kinds += [pp.orthogonalizer for pp in [*self.plan.params.values(), self.plan.default] if pp is not None]
        hybrids = [k for k in kinds if isinstance(k, HybridNS) or k == "hybrid"]
        if hybrids and not any(isinstance(c, HybridControl) for c in have):
            extra.append(HybridControl(bounded=any(not isinstance(k, HybridNS) or k.bound is not None for k in hybrids)))
        for c in extra:
            self.add_policy(c)

    def add_policy(self, policy) -> None:
        """Ask ``policy.select(name, step, orth, group)`` for every matrix before each step's
        orthogonalization (in order of addition); it also observes every orthogonalized matrix."""
        check_policy(policy)
        key = policy_key(policy)
        if any(policy_key(p) == key for p in self._policies):
            raise ConfigError(f"a policy with key {key!r} is installed already; give each policy a distinct .key")
        state = self._pending_policy_state.pop(key, None)
        if state is not None and callable(getattr(policy, "load_state_dict", None)):
            policy.load_state_dict(state)
        self._policies.append(policy)
        self.register_orth_hook(policy)

    add_controller = add_policy  # former name

    @property
    def policies(self) -> tuple:
        """The installed orthogonalization policies, in the order they are asked."""
        return tuple(self._policies)

    def _choose(self, param: str, name: str, group: dict, step: int) -> tuple[Orthogonalizer, tuple]:
        """Configured orthogonalizer of parameter ``param``, then each policy's say on matrix ``name``."""
        orth, key = self.orthogonalizer_for(param, group)
        for policy in self._policies:
            new = policy.select(name, step, orth, group)
            if new is not orth:
                orth, key = new, ("chosen", id(new))  # policies keep their instances alive
        return orth, key

    # --- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One Muon step over every parameter with a gradient. Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._revalidate()  # values set on a group since construction, before anything is touched
        ctx = D.DistContext.detect(self._process_group, self._distributed)
        if ctx and not all(getattr(c, "distributed_safe", False) for c in self._policies):
            raise ConfigError("adaptive steps and failed-share-triggered hybrid correction decide from spectra "
                              "seen on one rank; use them in single-process training (or hybrid with bound=None)")
        if ctx:
            self.check_ranks(ctx)
        step = self._muon_step + 1
        items = self._screen_nonfinite(self._collect(), ctx)
        want = [bool(h.wants_spectrum(step)) for h in list(self._orth_hooks.values())]  # every hook is asked
        works = self._works(items, step)
        owners, local = D.share(works, ctx)
        F.orthogonalize(local, any(want), retain=bool(self._orth_hooks))
        self._notify(local, step, ctx.rank if ctx else 0)
        D.gather_updates_(works, owners, ctx)
        self._screen_updates(works)
        F.apply_updates(works)
        self._account(works, local, step)
        self._muon_step = step
        return loss

    def signature(self) -> list[tuple]:
        """(group, name, shape, dtype, "view, orthogonalizer", split) of every parameter in order:
        what every rank must agree on for sharded steps (DTensor parameters by their global shape)."""
        index = {id(g): i for i, g in enumerate(self.param_groups)}
        return [D.layout_row(index[id(g)], name, p, f"{self.view_of(name, p)}, {self._orth_text(name, g)}", g["split"])
                for name, p, g in self.named_params()]

    def _orth_text(self, name: str, group: dict) -> str:
        """The configured orthogonalizer of a parameter, as ranks compare it (it sets the work split)."""
        orth, _ = self.orthogonalizer_for(name, group)
        schedule, steps = orth.label
        dtype = getattr(orth, "dtype", None)
        return f"{orth.kind} {schedule}x{steps}{'' if dtype is None else ' ' + str(dtype).removeprefix('torch.')}"

    def layout_key(self, ctx) -> tuple:
        """What identifies the parameter layout last compared across ranks (cheap: tensor ids)."""
        return ctx.world, tuple(id(p) for g in self.param_groups for p in g["params"])

    def check_ranks(self, ctx) -> None:
        """Compare :meth:`signature` across the ranks of ``ctx`` (a 16-byte hash per step; the
        signature is rebuilt only when the parameters or group options change here):
        :class:`~muonscope.errors.DistributedMismatchError` on every rank alike when they differ,
        before any collective that could hang or crash on the mismatch."""
        if self._layout_verified_for == self._muon_step + 1:
            return  # a MuonWithAdamW compared this step's whole layout already
        rows, digest, _ = self.layout(ctx)
        D.check_same_layout(rows, ctx, digest, self._has_grad())

    def _has_grad(self) -> list[bool]:
        return [p.grad is not None for g in self.param_groups for p in g["params"]]

    def layout(self, ctx) -> tuple[list[tuple], int, int]:
        """(:meth:`signature`, its digest, a version that grows whenever it is rebuilt), rebuilt
        only when the parameters or group options changed."""
        key = self.layout_key(ctx)
        if key != self._ranks_checked:
            rows = self.signature()
            self._layout = (rows, D.layout_digest(rows), self._layout[2] + 1)
            self._ranks_checked = key
        return self._layout

    def _screen_updates(self, works: list[F.Work]) -> None:
        """Find matrices whose update is exactly zero although their momentum is not (NS
        normalization over/underflowed: the parameter stops moving), whose update is not finite
        (replaced by zeros so parameters stay finite) or whose momentum norm exceeds
        MOMENTUM_LIMIT; count them in ``stats`` and warn once per parameter. Read-only otherwise."""
        st = self.stats
        st.update(last_zero_updates=0, last_nonfinite_updates=0, last_huge_momentum=0)
        if not works:
            return
        upd = torch._foreach_norm([w.update for w in works])
        mom = torch._foreach_norm([w.momentum if w.momentum is not None else w.materialize() for w in works])
        dev = upd[0].device
        u_norm, m_norm = (torch.stack(n).float() if all(x.device == dev for x in n)  # stack promotes dtypes
                          else torch.stack([x.float().to(dev) for x in n]) for n in (upd, mom))
        flags = torch.stack([(u_norm == 0) & (m_norm > 0), ~torch.isfinite(u_norm),
                             ~(m_norm <= MOMENTUM_LIMIT)])
        if not bool(flags.any()):
            return
        zero, nonfinite, huge = (f.tolist() for f in flags)
        m_list = m_norm.tolist()
        layers = st.setdefault("layers", {})
        for w, z, nf, h, mn in zip(works, zero, nonfinite, huge, m_list, strict=True):
            if nf:
                w.update = torch.zeros_like(w.update)
            for flag, key in ((z, "zero_updates"), (nf, "nonfinite_updates"), (h, "huge_momentum")):
                if flag:
                    st[key] += 1
                    st["last_" + key] += 1
                    e = layers.setdefault(w.name, {"ns_flops": 0, "ns_matmuls": 0})
                    e[key] = e.get(key, 0) + 1
            if (z or nf or h) and w.name not in self._warned:
                self._warned.add(w.name)
                what = ("a non-finite update, not applied," if nf else
                        "an exactly zero update although its momentum is not zero (the Newton-Schulz "
                        "normalization overflowed: the parameter stops moving while this momentum lasts)" if z else
                        f"a momentum norm above {MOMENTUM_LIMIT:g} (one huge gradient steers its updates "
                        "for hundreds of steps)")
                warnings.warn(
                    f"Muon: {w.name!r} got {what} at step {self._muon_step + 1} (momentum norm {mn:.3g}). Lower "
                    "the loss scale or clip gradients, and reset its momentum (optimizer.state[p].clear()); "
                    "counted in optimizer.stats (zero_updates, nonfinite_updates, huge_momentum)",
                    RuntimeWarning, stacklevel=3)

    def _collect(self) -> list[tuple[str, torch.Tensor, dict]]:
        items = []
        for name, p, group in self.named_params():
            if p.grad is None:
                continue
            if p.is_complex():
                raise UnsupportedParamError(f"Muon does not support complex parameters ({name!r}); optimize real "
                                            "and imaginary parts as separate real tensors")
            if p.grad.is_sparse:
                raise ConfigError(f"parameter {name!r} has a sparse gradient; Muon needs dense gradients")
            items.append((name, p, group))
        return items

    def _screen_nonfinite(self, items: list, ctx) -> list:
        self.stats["last_skipped_nonfinite"] = 0
        if not items:
            return items
        bad = nonfinite_mask([p.grad for _, p, _ in items], ctx)
        if not any(bad):
            return items
        names = [name for (name, _, _), b in zip(items, bad, strict=True) if b]
        if self.nonfinite == "raise":
            raise NonFiniteError(
                f"non-finite gradient (NaN/Inf) in {len(names)} parameter(s): {', '.join(names[:5])}"
                f"{' …' if len(names) > 5 else ''}; nothing was updated. Check the loss and lr, "
                "or construct the optimizer with nonfinite='skip'")
        self.stats["skipped_nonfinite"] += len(names)
        self.stats["last_skipped_nonfinite"] = len(names)
        return [it for it, b in zip(items, bad, strict=True) if not b]

    def _works(self, items: list, step: int) -> list[F.Work]:
        """Momentum update per group (one multi-tensor op), then one Work per matrix."""
        by_group: dict[int, list] = {}
        for it in items:
            by_group.setdefault(id(it[2]), []).append(it)
        works: list[F.Work] = []
        for group_items in by_group.values():
            group = group_items[0][2]
            bufs = []
            for _, p, _ in group_items:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            F.momentum_(bufs, [p.grad for _, p, _ in group_items], float(group["momentum"]), group["momentum_form"])
            for (name, p, _), buf in zip(group_items, bufs, strict=True):
                works.extend(self._matrix_works(name, p, buf, group, step))
        return works

    def _matrix_works(self, name: str, p: torch.Tensor, buf: torch.Tensor, group: dict, step: int) -> list[F.Work]:
        """The (out, in) matrices of one parameter's view (one per expert), optionally in row blocks."""
        view = self.view_of(name, p)
        if D.is_dtensor(buf):  # gathering is a collective: every rank forms the full matrix now
            beta, nesterov, form = float(group["momentum"]), bool(group["nesterov"]), group["momentum_form"]
            x = F.ns_input(p.grad, buf, beta, nesterov, form)
            X = D.full_tensor(x)
            M = X if x is buf else (D.full_tensor(buf) if self._orth_hooks else None)
            X3, G3, M3 = matrices(X, view), None, (matrices(M, view) if M is not None else None)
        else:
            X3, G3, M3 = None, matrices(p.grad, view), matrices(buf, view)
        n_mats, rows, cols = matrix_shape(view, p.shape)
        experts = view in ("experts", "experts_t")
        split = group["split"]
        if split is None:
            blocks = [("", None)]
        else:
            sizes = [rows // split] * split if isinstance(split, int) else list(split)
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            blocks = [(f"[block {i}]", slice(s, s + k)) for i, (s, k) in enumerate(zip(starts, sizes, strict=True))]
        dev = p.grad.device
        dt = X3.dtype if X3 is not None else buf.dtype
        out = []
        for e in range(n_mats):
            prefix = f"{name}[expert {e}]" if experts else name
            for suffix, sl in blocks:
                def pick(t, e=e, sl=sl):
                    return None if t is None else (t[e] if sl is None else t[e][sl])

                r = rows if sl is None else sl.stop - sl.start
                orth, key = self._choose(name, prefix + suffix, group, step)
                if isinstance(orth, AutoNewtonSchulz):  # Gram or standard NS by this matrix's shape
                    orth = orth.choose(r, cols, dev)
                if isinstance(orth, GramNewtonSchulz):  # dtype and restarts fixed for the device
                    orth = orth.for_device(dev)
                cdt = orth.compute_dtype(dev) if isinstance(orth, NewtonSchulz) else dt
                out.append(F.Work(p, group, prefix + suffix, pick(X3), pick(M3), (e, sl), orth, key,
                                  int(orth.flops(r, cols)), lr_ratio(group["adjust_lr_fn"], r, cols), cdt,
                                  torch.Size((r, cols)), dev, grad=pick(G3), view=view,
                                  expert=e if experts else None))
        return out

    def _notify(self, works: list[F.Work], step: int, rank: int) -> None:
        """Tell every hook (and policy) about each matrix this rank orthogonalized."""
        if not self._orth_hooks:
            return
        hooks = list(self._orth_hooks.values())
        for w in works:
            event = OrthEvent(name=w.name, param=w.param, step=step, matrix=w.matrix, momentum=w.momentum,
                              spectrum=w.spectrum, orthogonalizer=w.orth, update=w.update, process_rank=rank,
                              expert=w.expert)
            for hook in hooks:
                hook.on_orthogonalize(event)

    def _account(self, works: list[F.Work], local: list[F.Work], step: int) -> None:
        """Cost of what was run (all matrices and this rank's), per matrix and in total, and the
        fidelity of the map used on matrices whose spectrum was computed."""
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
                e.update({k: fid[k] for k in FIDELITY_KEYS}, fidelity_step=step)

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """torch's optimizer state dict plus ``"muonscope": {"step", "stats"}``; weights_only-safe."""
        sd = super().state_dict()
        for g in sd["param_groups"]:
            if isinstance(g.get("orthogonalizer"), Orthogonalizer):
                g["orthogonalizer"] = g["orthogonalizer"].kind
        sd["muonscope"] = {"step": self._muon_step, "stats": dict(self.stats), "controllers": {
            policy_key(c): c.state_dict() for c in self._policies if callable(getattr(c, "state_dict", None))}}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict from :meth:`state_dict` (or from ``torch.optim.Muon``: missing options
        take this optimizer's defaults).

        Saved parameters are paired with this optimizer's by name when both carry names (torch ≥ 2.6
        stores ``param_names`` for named parameters), else by position; missing or extra names,
        parameters in another group and momentum buffers of another shape are refused with
        :class:`~muonscope.errors.StateDictMismatchError` (see :mod:`muonscope.optim.layout`), as
        are invalid options. A refused state dict changes nothing."""
        sd = dict(state_dict) if isinstance(state_dict, dict) else state_dict
        hooks = self._optimizer_load_state_dict_pre_hooks
        for hook in hooks.values():  # run here so that hooks may adapt the layout before it is checked
            result = hook(self, sd)
            if result is not None:
                sd = result
        sd = align_state_dict(sd, self.param_groups)
        extra = sd.pop("muonscope", None)
        prepared = self._loaded_options(sd["param_groups"])
        step, stats, controllers = self._loaded_extra(extra)
        snapshot = self._snapshot()
        pre_hooks = list(hooks.items())
        hooks.clear()  # already run above
        try:
            super().load_state_dict(sd)
            for g, options in zip(self.param_groups, prepared, strict=True):
                g.update(options)
            if extra:
                self._muon_step = step
                self.stats.update(stats)
                self._pending_policy_state.update(controllers)
                for c in self._policies:
                    state = self._pending_policy_state.pop(policy_key(c), None)
                    if state is not None and callable(getattr(c, "load_state_dict", None)):
                        c.load_state_dict(state)
        except Exception:
            self._restore(snapshot)
            raise
        finally:
            hooks.update(pre_hooks)
        self._ranks_checked = None  # group options may differ: compare across ranks again

    def _loaded_options(self, saved_groups: list[dict]) -> list[dict]:
        """Each saved group's options, completed with this optimizer's defaults and validated
        against the current parameters (on copies: nothing is changed here)."""
        out = []
        names = [[n for n, _, gg in self.named_params() if gg is g] for g in self.param_groups]
        for sg, cur, cur_names in zip(saved_groups, self.param_groups, names, strict=True):
            opts = {k: v for k, v in sg.items() if k not in ("params", "param_names")}
            for k in OPTION_KEYS:  # torch's own defaults (e.g. "differentiable") are not Muon options
                opts.setdefault(k, self.defaults[k])
            old = cur["orthogonalizer"]
            if isinstance(old, Orthogonalizer) and opts["orthogonalizer"] == old.kind:
                opts["orthogonalizer"] = old
            self._validate_options(opts)
            for name, p in zip(cur_names, cur["params"], strict=True):
                self._check_param(name, p, opts)
            out.append(opts)
        return out

    @staticmethod
    def _loaded_extra(extra) -> tuple[int, dict, dict]:
        """(step, stats, policy states) of a saved ``"muonscope"`` entry, type-checked."""
        if not extra:
            return 0, {}, {}
        if not isinstance(extra, dict):
            raise ConfigError(f"the state dict's 'muonscope' entry must be a dict, got {type(extra).__name__}")
        step = V.integer("saved step", extra.get("step", 0), low=0)
        stats, controllers = extra.get("stats", {}) or {}, extra.get("controllers", {}) or {}
        if not isinstance(stats, dict) or not isinstance(controllers, dict):
            raise ConfigError("the state dict's 'muonscope' entry needs dicts under 'stats' and 'controllers'")
        return step, stats, controllers

    def _snapshot(self) -> tuple:
        """What :meth:`load_state_dict` may change, to put back if it fails halfway."""
        policies = [(c, c.state_dict()) for c in self._policies if callable(getattr(c, "state_dict", None))]
        return (self.state, self.param_groups, self._muon_step, dict(self.stats),
                dict(self._pending_policy_state), policies)

    def _restore(self, snapshot: tuple) -> None:
        self.state, self.param_groups, self._muon_step, stats, pending, policies = snapshot
        self.stats = stats
        self._pending_policy_state = pending
        for c, state in policies:
            if callable(getattr(c, "load_state_dict", None)):
                c.load_state_dict(state)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update(nonfinite=self.nonfinite, plan=self.plan, _distributed=self._distributed,
                     _muon_step=self._muon_step, stats=dict(self.stats), controllers=list(self._policies),
                     views=dict(self.views))
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
        self.__dict__.setdefault("views", {})
        self._view_cache = {}
        self._process_group = None
        self._init_runtime()
        self._muon_step = step
        if stats:
            self.stats.update(stats)
        for c in controllers:
            self.add_policy(c)

