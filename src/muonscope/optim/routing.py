"""Which parameters Muon optimizes, and one optimizer object that also runs AdamW for the rest.

Routing rules (first match wins): explicit ``adamw=`` / ``muon=`` overrides (regex on the
parameter name, a list of them, or a predicate ``f(name, param) -> bool``); tensors with < 2 dims
(biases, norm gains) and stacked biases (a name ending in ``bias``, e.g. GPT-OSS ``down_proj_bias``)
→ AdamW; parameters of ``nn.Embedding``/``nn.EmbeddingBag`` (including output heads tied to them)
→ AdamW; parameters of a module whose own name is an output-head name (``lm_head``, ``head``,
``classifier``, ``fc``, ``output``, ``score``, ``logits``) → AdamW; MoE routers (a module named
``router`` or ``shared_expert_gate``, or ``gate`` next to an ``experts`` module) → AdamW;
everything else with ≥ 2 dims (hidden linear weights, fused QKV, conv kernels, expert stacks) →
Muon. Frozen parameters (``requires_grad=False``) are left out. Names drop ``torch.compile``'s
``_orig_mod.`` prefixes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import nn
from torch.optim import Optimizer

from muonscope import validate as V
from muonscope.errors import ConfigError, NonFiniteError
from muonscope.optim import distributed as D
from muonscope.optim.functional import nonfinite_mask
from muonscope.optim.layout import align_state_dict, saved_groups
from muonscope.optim.muon import DEFAULT_NS_COEFFICIENTS, NONFINITE_POLICIES, Muon
from muonscope.optim.views import canonical_name, infer_views

HEAD_NAMES = ("lm_head", "head", "classifier", "fc", "output", "score", "logits")
ROUTER_NAMES = ("router", "shared_expert_gate")  # "gate" counts when it sits next to "experts"

Selector = str | Iterable[str] | Callable[[str, torch.Tensor], bool] | None


class ParamSplit(NamedTuple):
    """``(muon, adamw)``: lists of ``(name, parameter)``."""

    muon: list[tuple[str, nn.Parameter]]
    adamw: list[tuple[str, nn.Parameter]]


def _matcher(sel: Selector) -> Callable[[str, torch.Tensor], bool]:
    if sel is None:
        return lambda name, p: False
    if callable(sel):
        return sel
    try:
        pats = [sel] if isinstance(sel, str) else list(sel)
        compiled = [re.compile(p) for p in pats]
    except (re.error, TypeError) as exc:
        raise ConfigError(f"override patterns must be regular expressions, got {sel!r}: {exc}") from exc
    return lambda name, p: any(c.search(name) for c in compiled)


def route(name: str, param: torch.Tensor, owner: nn.Module | None, owner_name: str, *,
          tied_to_embedding: bool = False, head_names: Iterable[str] = HEAD_NAMES,
          beside_experts: bool = False) -> tuple[str, str]:
    """("muon" | "adamw", reason) for one parameter by the built-in rules; ``beside_experts``:
    the owner's parent module also holds an ``experts`` module (an MoE block)."""
    if param.ndim < 2:
        return "adamw", f"{param.ndim}-D tensor"
    if name.endswith("bias"):
        return "adamw", "bias"
    if isinstance(owner, (nn.Embedding, nn.EmbeddingBag)) or tied_to_embedding:
        return "adamw", "embedding"
    leaf = owner_name.rsplit(".", 1)[-1]
    if leaf in set(head_names):
        return "adamw", "output head"
    if leaf in ROUTER_NAMES or leaf == "gate" and beside_experts:
        return "adamw", "router"
    return "muon", "hidden matrix"


def check_adamw_options(group: dict, prefix: str = "adamw_") -> None:
    """AdamW's numbers: lr ∈ [0, MAX_LR] (float or 1-element tensor), betas a pair in [0, 1), eps ∈ (0, 1],
    weight_decay ≥ 0 with lr·weight_decay ≤ 1, all finite (torch's AdamW accepts inf and NaN)."""
    lr = group["lr"]
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ConfigError(f"Tensor {prefix}lr must be 1-element, got shape {tuple(lr.shape)}")
    for key in ("lr", "eps", "weight_decay"):
        if isinstance(group[key], (str, bytes)):
            raise ConfigError(f"{prefix}{key} must be a number, got {group[key]!r}")
    lr = V.learning_rate(f"{prefix}lr", lr)
    betas = group["betas"]
    if isinstance(betas, (str, bytes, torch.Tensor)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise ConfigError(f"{prefix}betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        if isinstance(b, (str, bytes)):
            raise ConfigError(f"{prefix}betas[{i}] must be a number, got {b!r}")
        V.real(f"{prefix}betas[{i}]", b, low=0.0, high=1.0, high_open=True)
    if not any(isinstance(b, torch.Tensor) for b in betas):
        group["betas"] = tuple(float(b) for b in betas)  # torch's AdamW wants both floats (or both tensors)
    V.real(f"{prefix}eps", group["eps"], low=0.0, high=1.0, low_open=True)
    wd = V.nonnegative(f"{prefix}weight_decay", group["weight_decay"])
    if lr * wd > 1.0:
        raise ConfigError(f"{prefix}lr * {prefix}weight_decay must be <= 1 (weights are scaled by 1 - lr * "
                          f"weight_decay each step), got lr={lr:g}, weight_decay={wd:g}")


def _tensors(groups: list[dict], where: str) -> list[tuple[str, torch.Tensor]]:
    """(label, tensor) of every entry of ``groups`` (tensors or (name, tensor) pairs)."""
    out = []
    for gi, g in enumerate(groups):
        params = g.get("params")
        if isinstance(params, torch.Tensor):
            params = [params]
        elif params is not None and not isinstance(params, set):
            g["params"] = params = list(params)
        for j, p in enumerate(params or ()):
            t = p[1] if isinstance(p, tuple) and len(p) == 2 else p
            if isinstance(t, torch.Tensor):
                out.append((f"{where} {p[0]!r}" if isinstance(p, tuple) else f"{where} group {gi} entry {j}", t))
    return out


def _refuse_shared(muon_groups: list[dict], adamw_groups: list[dict]) -> None:
    """No tensor may be listed twice: once in Muon and once in AdamW, or twice in AdamW's groups
    (it would be updated twice per step; torch's AdamW only warns within a group)."""
    seen: dict[int, str] = {}
    for where, groups in (("Muon", muon_groups), ("AdamW", adamw_groups)):
        for label, t in _tensors(groups, where):
            if id(t) in seen and (where == "AdamW" or seen[id(t)].startswith("AdamW")):
                raise ConfigError(f"the same tensor is listed twice ({seen[id(t)]} and {label}); it would be "
                                  "updated twice per step: give each parameter to one optimizer, once")
            seen.setdefault(id(t), label)


def split_params(model: nn.Module, *, muon: Selector = None, adamw: Selector = None,
                 head_names: Iterable[str] = HEAD_NAMES) -> ParamSplit:
    """Split ``model``'s trainable parameters into Muon and AdamW lists (see module docstring)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"split_params needs an nn.Module, got {type(model).__name__}")
    try:
        head_names = tuple(head_names)
    except TypeError:
        head_names = None
    if head_names is None or isinstance(head_names, str) or not all(isinstance(h, str) for h in head_names):
        raise ConfigError(f"head_names must be a list of module names, got {head_names!r}")
    to_muon, to_adamw = _matcher(muon), _matcher(adamw)
    owners: dict[int, tuple[nn.Module, str]] = {}
    embedded: set[int] = set()
    moe = {canonical_name(n) for n, m in model.named_modules() if isinstance(getattr(m, "experts", None), nn.Module)}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        mod_name = canonical_name(mod_name)
        for pname, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), (mod, mod_name))
            if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
                embedded.add(id(p))
            del pname
    out = ParamSplit([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = canonical_name(name)
        m, a = to_muon(name, p), to_adamw(name, p)
        if m and a:
            raise ConfigError(f"parameter {name!r} matches both the muon and the adamw overrides; make them disjoint")
        if m:
            if p.ndim < 2:
                raise ConfigError(f"parameter {name!r} has shape {tuple(p.shape)}; Muon needs >= 2 dims")
            dest = "muon"
        elif a:
            dest = "adamw"
        else:
            owner, owner_name = owners.get(id(p), (None, name.rsplit(".", 1)[0]))
            dest, _ = route(name, p, owner, owner_name, tied_to_embedding=id(p) in embedded,
                            head_names=head_names, beside_experts=owner_name.rpartition(".")[0] in moe)
        (out.muon if dest == "muon" else out.adamw).append((name, p))
    return out


class MuonWithAdamW(Optimizer):
    """Muon for hidden matrices and AdamW for the rest, as one optimizer.

    ``model_or_groups`` is an ``nn.Module`` (split by :func:`split_params` with the ``muon_params``
    / ``adamw_params`` overrides), a :class:`ParamSplit`, or a list of param-group dicts each with
    ``"use_muon": bool``. It is one ``torch.optim.Optimizer``: ``param_groups`` lists Muon's groups
    then AdamW's (each with ``use_muon``), ``defaults`` are Muon's (AdamW's when there are no Muon
    parameters), so ``torch.optim.lr_scheduler`` (OneCycleLR included: with Muon parameters it
    cycles Muon's ``momentum``; AdamW's ``betas`` stay) and transformers' schedules drive both;
    ``state_dict()`` has torch's ``state``/``param_groups`` layout (AdamW's parameters numbered
    after Muon's) plus ``"muonscope"`` (Muon's step, statistics and policy state, AdamW's skip
    counts); the former ``{"muon", "adamw"}`` layout still loads. Matrix views (expert stacks, HF ``Conv1D``) are inferred from a model's
    modules (:func:`~muonscope.optim.views.infer_views`); ``views=`` adds or overrides them.
    Muon arguments are :class:`Muon`'s; ``adamw_*`` default to
    ``torch.optim.AdamW``'s. The ``nonfinite`` policy covers AdamW parameters too.
    """

    def __init__(self, model_or_groups, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = DEFAULT_NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int | None = None, adjust_lr_fn: str | None = None, *,
                 adamw_lr: float = 1e-3, adamw_betas: tuple[float, float] = (0.9, 0.999),
                 adamw_eps: float = 1e-8, adamw_weight_decay: float = 1e-2,
                 muon_params: Selector = None, adamw_params: Selector = None,
                 nonfinite: str = "raise", **muon_options) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        adamw_defaults = dict(lr=adamw_lr, betas=adamw_betas, eps=adamw_eps, weight_decay=adamw_weight_decay)
        check_adamw_options(adamw_defaults)
        adamw_betas = adamw_defaults["betas"]
        muon_groups, adamw_groups = self._groups(model_or_groups, muon_params, adamw_params)
        _refuse_shared(muon_groups, adamw_groups)
        for g in adamw_groups:
            options = {**adamw_defaults, **{k: v for k, v in g.items() if k in adamw_defaults}}
            check_adamw_options(options)
            if "betas" in g:
                g["betas"] = options["betas"]
        if isinstance(model_or_groups, nn.Module):
            muon_options["views"] = {**infer_views(model_or_groups), **(muon_options.get("views") or {})}
        self.nonfinite = nonfinite
        self.muon = Muon(muon_groups, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         nesterov=nesterov, ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                         adjust_lr_fn=adjust_lr_fn, nonfinite=nonfinite, **muon_options) if muon_groups else None
        self.adamw = torch.optim.AdamW(adamw_groups, lr=adamw_lr, betas=adamw_betas, eps=adamw_eps,
                                       weight_decay=adamw_weight_decay) if adamw_groups else None
        if self.muon is None and self.adamw is None:
            raise ConfigError("MuonWithAdamW got no trainable parameters")
        for opt, flag in ((self.muon, True), (self.adamw, False)):
            for g in opt.param_groups if opt is not None else ():
                g["use_muon"] = flag
        self._adamw_stats = {"adamw_skipped_nonfinite": 0, "last_adamw_skipped_nonfinite": 0}
        self._ranks_checked = None
        self._layout: tuple = ([], 0)
        self._ready = False
        super().__init__([{"params": []}], dict((self.muon or self.adamw).defaults))
        self._ready = True

    @staticmethod
    def _groups(spec, muon_sel, adamw_sel) -> tuple[list[dict], list[dict]]:
        if isinstance(spec, nn.Module):
            spec = split_params(spec, muon=muon_sel, adamw=adamw_sel)
        elif muon_sel is not None or adamw_sel is not None:
            raise ConfigError("muon_params/adamw_params overrides apply only when a model is given")
        if isinstance(spec, ParamSplit):
            return ([{"params": spec.muon}] if spec.muon else [],
                    [{"params": spec.adamw}] if spec.adamw else [])
        groups = list(spec)
        if not groups or not all(isinstance(g, dict) and isinstance(g.get("use_muon"), bool) for g in groups):
            raise ConfigError("pass a model, a ParamSplit, or a list of param-group dicts each with "
                              "'params' and 'use_muon': True/False")
        strip = [{k: v for k, v in g.items() if k != "use_muon"} for g in groups]
        return ([s for s, g in zip(strip, groups, strict=True) if g["use_muon"]],
                [s for s, g in zip(strip, groups, strict=True) if not g["use_muon"]])

    def _subs(self) -> list[Optimizer]:
        return [o for o in (self.muon, self.adamw) if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        if not getattr(self, "_ready", False):
            return []
        return [g for o in self._subs() for g in o.param_groups]

    @param_groups.setter
    def param_groups(self, value) -> None:  # set by Optimizer.__init__; the sub-optimizers own groups
        pass

    @property
    def state(self) -> dict:
        if not getattr(self, "_ready", False):
            return {}
        return {k: v for o in self._subs() for k, v in o.state.items()}

    @state.setter
    def state(self, value) -> None:
        pass

    @property
    def stats(self) -> dict:
        """Muon's statistics plus AdamW's skipped non-finite count."""
        base = dict(self.muon.stats) if self.muon is not None else {}
        return base | self._adamw_stats

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to Muon (``use_muon=True``) or AdamW (``use_muon=False``)."""
        if not getattr(self, "_ready", False):
            return
        use_muon = param_group.pop("use_muon", None)
        if not isinstance(use_muon, bool):
            raise ConfigError("a param group for MuonWithAdamW needs 'use_muon': True or False")
        target = self.muon if use_muon else self.adamw
        if target is None:
            raise ConfigError(f"this MuonWithAdamW was built without {'Muon' if use_muon else 'AdamW'} parameters")
        current = [{"params": list(g["params"])} for g in self.param_groups]
        mine, others = ([param_group], []) if use_muon else ([], [param_group])
        _refuse_shared([*current[:len(self.muon.param_groups) if self.muon else 0], *mine],
                       [*current[len(self.muon.param_groups) if self.muon else 0:], *others])
        if not use_muon:
            options = {**self.adamw.defaults, **param_group}
            check_adamw_options(options)
            if "betas" in param_group:
                param_group["betas"] = options["betas"]
        target.add_param_group(param_group)
        target.param_groups[-1]["use_muon"] = use_muon

    def register_orth_hook(self, hook):
        """See :meth:`Muon.register_orth_hook`."""
        if self.muon is None:
            raise ConfigError("no Muon parameters to observe")
        return self.muon.register_orth_hook(hook)

    def _dist_context(self):
        opts = self.muon
        return D.DistContext.detect(opts._process_group if opts else None, opts._distributed if opts else None)

    def _check_ranks(self) -> None:
        """Compare Muon's and AdamW's parameters across ranks before the first collective of
        each step, in one exchange (see :meth:`Muon.check_ranks`)."""
        ctx = self._dist_context()
        if not ctx:
            return
        muon_rows, _, version = self.muon.layout(ctx) if self.muon is not None else ([], 0, 0)
        adamw = [p for g in self.adamw.param_groups for p in g["params"]] if self.adamw is not None else []
        key = (version, tuple(map(id, adamw)))
        if key != self._ranks_checked:
            rows = list(muon_rows)
            offset = len(self.muon.param_groups) if self.muon is not None else 0
            for gi, g in enumerate(self.adamw.param_groups if self.adamw is not None else ()):
                names = g.get("param_names") or [f"adamw{gi}.param{j}" for j in range(len(g["params"]))]
                rows += [D.layout_row(offset + gi, n, p, "adamw") for n, p in zip(names, g["params"], strict=True)]
            self._layout = (rows, D.layout_digest(rows))
            self._ranks_checked = key
        rows, digest = self._layout
        grads = (self.muon._has_grad() if self.muon is not None else []) + [p.grad is not None for p in adamw]
        D.check_same_layout(rows, ctx, digest, grads)
        if self.muon is not None:
            self.muon._layout_verified_for = self.muon._muon_step + 1

    def _adamw_nonfinite(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Check AdamW gradients; on 'skip' return (param, grad) pairs to hide from AdamW."""
        self._adamw_stats["last_adamw_skipped_nonfinite"] = 0
        if self.adamw is None:
            return []
        named = []
        for gi, g in enumerate(self.adamw.param_groups):
            names = g.get("param_names") or [f"adamw{gi}.param{j}" for j in range(len(g["params"]))]
            named += [(n, p) for n, p in zip(names, g["params"], strict=True) if p.grad is not None]
        if not named:
            return []
        ctx = self._dist_context()
        bad = nonfinite_mask([p.grad for _, p in named], ctx)
        if not any(bad):
            return []
        names = [n for (n, _), b in zip(named, bad, strict=True) if b]
        if self.nonfinite == "raise":
            raise NonFiniteError(
                f"non-finite gradient (NaN/Inf) in {len(names)} AdamW parameter(s): {', '.join(names[:5])}; "
                "nothing was updated. Check the loss and lr, or construct the optimizer with nonfinite='skip'")
        self._adamw_stats["adamw_skipped_nonfinite"] += len(names)
        self._adamw_stats["last_adamw_skipped_nonfinite"] = len(names)
        return [(p, p.grad) for (_, p), b in zip(named, bad, strict=True) if b]

    @torch.no_grad()
    def step(self, closure=None):
        """Muon step, then AdamW step; on 'raise' nothing is touched when any gradient is non-finite."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.adamw.param_groups if self.adamw is not None else ():
            check_adamw_options(g)  # values set on a group since construction; Muon checks its own
        if self.muon is not None:
            self.muon._revalidate()
        self._check_ranks()
        hidden = self._adamw_nonfinite()
        if self.muon is not None:
            self.muon.step()
        if self.adamw is not None:
            for p, _ in hidden:
                p.grad = None
            try:
                self.adamw.step()
            finally:
                for p, g in hidden:
                    p.grad = g
        return loss

    def _parts(self) -> list[tuple[bool, Optimizer]]:
        return [(flag, o) for flag, o in ((True, self.muon), (False, self.adamw)) if o is not None]

    def state_dict(self) -> dict:
        """torch's layout over both optimizers: ``state`` and ``param_groups`` (Muon's parameters
        numbered first), plus ``"muonscope"``; runs this optimizer's state-dict hooks."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state, groups, extra, offset = {}, [], {}, 0
        for flag, opt in self._parts():
            sd = opt.state_dict()
            if flag:
                extra.update(sd.get("muonscope", {}))
            state.update({k + offset: v for k, v in sd["state"].items()})
            groups += [{**g, "params": [i + offset for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        extra["adamw_stats"] = dict(self._adamw_stats)
        out = {"state": state, "param_groups": groups, "muonscope": extra}
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, out)
            if result is not None:
                out = result
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Load what :meth:`state_dict` returned (or the former ``{"muon", "adamw"}`` layout).

        Parameters are paired by name where the saved groups carry names, else by position, and
        refused (:class:`~muonscope.errors.StateDictMismatchError`) when names, groups or state
        shapes differ (:mod:`muonscope.optim.layout`); a refused state dict changes nothing."""
        sd = dict(state_dict) if isinstance(state_dict, dict) else state_dict
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        if not isinstance(sd, dict):
            raise ConfigError(f"an optimizer state dict must be a dict, got {type(sd).__name__}")
        if "param_groups" not in sd and ("muon" in sd or "adamw" in sd):
            parts, adamw_stats = self._split_layout(sd), sd.get("adamw_stats") or {}
        else:
            parts, adamw_stats = self._torch_layout(sd), (sd.get("muonscope") or {}).get("adamw_stats") or {}
        if not isinstance(adamw_stats, dict):
            raise ConfigError("the state dict's 'adamw_stats' must be a dict")
        snapshot = [(opt, opt._snapshot() if opt is self.muon else (opt.state, opt.param_groups))
                    for opt, _ in parts]
        stats = dict(self._adamw_stats)
        try:
            for opt, part in parts:
                opt.load_state_dict(part)
                for g in opt.param_groups:
                    g["use_muon"] = opt is self.muon
            self._adamw_stats.update(adamw_stats)
        except Exception:
            for opt, snap in snapshot:
                if opt is self.muon:
                    opt._restore(snap)
                else:
                    opt.state, opt.param_groups = snap
            self._adamw_stats = stats
            raise
        self._ranks_checked = None
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _torch_layout(self, sd: dict) -> list[tuple[Optimizer, dict]]:
        """(optimizer, its part of ``sd``) after checking the whole layout against both optimizers."""
        groups = saved_groups(sd)
        if not all(isinstance(g.get("use_muon"), bool) for g in groups):
            raise ConfigError("not a MuonWithAdamW state dict: every param group needs 'use_muon'")
        # Muon's groups first, then AdamW's, as this optimizer lists them.
        ordered = [g for g in groups if g["use_muon"]] + [g for g in groups if not g["use_muon"]]
        aligned = align_state_dict({**sd, "param_groups": ordered}, self.param_groups)
        extra = dict(sd.get("muonscope") or {})
        extra.pop("adamw_stats", None)
        parts = []
        for flag, opt in ((True, self.muon), (False, self.adamw)):
            sub = [g for g in aligned["param_groups"] if g["use_muon"] is flag]
            if (opt is None) != (not sub):
                raise ConfigError(f"state dict and optimizer disagree on whether there are "
                                  f"{'Muon' if flag else 'AdamW'} parameters")
            if opt is None:
                continue
            ids = {i for g in sub for i in g["params"]}
            part = {"state": {k: v for k, v in (sd.get("state") or {}).items() if k in ids}, "param_groups": sub}
            if flag and extra:
                part["muonscope"] = extra
            parts.append((opt, part))
        return parts

    def _split_layout(self, sd: dict) -> list[tuple[Optimizer, dict]]:
        """The former ``{"muon": …, "adamw": …}`` layout, each part checked before any is loaded."""
        parts = []
        for key, opt in (("muon", self.muon), ("adamw", self.adamw)):
            if (opt is None) != (sd.get(key) is None):
                raise ConfigError(f"state dict and optimizer disagree on whether there are {key} parameters")
            if opt is not None:
                part = dict(sd[key]) if isinstance(sd[key], dict) else sd[key]
                extra = part.pop("muonscope", None) if isinstance(part, dict) else None
                part = align_state_dict(part, opt.param_groups)
                if extra is not None:
                    part["muonscope"] = extra
                parts.append((opt, part))
        return parts

    def __getstate__(self) -> dict:
        return {"defaults": self.defaults, "muon": self.muon, "adamw": self.adamw, "nonfinite": self.nonfinite,
                "_adamw_stats": self._adamw_stats, "_ready": True, "_ranks_checked": None, "_layout": ([], 0)}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
