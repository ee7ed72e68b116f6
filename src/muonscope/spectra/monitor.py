"""SpectralMonitor: per-layer normalized singular-value statistics of what NS orthogonalizes.

Attach it to a :class:`muonscope.Muon`; on sampled steps every monitored matrix X yields one record:
quantiles s_q of s = σ/‖X‖_F (descending rank ⌈q·r⌉), s_max, s_min, ‖X‖_F, stable rank, normalized
spectral entropy, and NS fidelity from the scalar map at zero matmul cost: min_i p(s_i) and the
share of directions with p(s_i) < ρ, and the orthogonalizer's cost on that matrix that step (``ns_flops``,
``ns_matmuls``). With ``spectrum="gram"`` (default) s comes from the first NS
Gram matrix A₀ = X₀X₀ᵀ the optimizer forms anyway (one symmetric eigensolve, no extra products; its
accuracy is that of the NS compute dtype: absolute error on s² ≈ eps_dtype·‖A₀‖); ``"svd"`` computes
σ by a float64 SVD of X instead (exact, costs an SVD). ``source="momentum"`` measures the momentum
buffer itself (float64 SVD). Every ``fidelity_every`` sampled steps it also measures
‖NS(X) − polar(X)‖_F/√r directly.

Any other ``torch.optim.Optimizer`` (torch.optim.Muon, Keller Jordan's or dion's Muon, AdamW…) is
watched through torch's step hooks (:mod:`muonscope.spectra.watch`): per matrix of each ≥ 2-D
parameter's view, ``source="momentum"`` records the momentum buffer found in the optimizer's state
and ``source="update"`` the applied update U = W_after − W_before(1 − lr·wd) (default: both), with
the NS fidelity of the map the optimizer claims (``ns_schedule``, ``ns_steps``) and, for updates,
``ns_pred_dev``: how far U's normalized spectrum is from that map applied to the NS input's.

    monitor = SpectralMonitor(opt, every=10, store=RunStore.create("runs/a", meta))
    ... training loop calls opt.step() as usual ...
    monitor.close()
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch

from muonscope.conventions import FAILURE_RHO, sampled
from muonscope.errors import ConfigError
from muonscope.orth.analysis import fidelity_stats
from muonscope.spectra import metrics as M
from muonscope.spectra.layers import LayerIndex

DEFAULT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def spectrum_record(s: np.ndarray, quantiles: Iterable[float], *, scalar_map: Callable | None = None,
                    rho: float = FAILURE_RHO) -> dict:
    """Statistics of one normalized spectrum s (any order); NS fidelity if ``scalar_map`` given."""
    s = -np.sort(-np.asarray(s, dtype=np.float64))
    qs = tuple(quantiles)
    rec = {M.quantile_column(q): float(v) for q, v in zip(qs, M.quantiles(s, qs), strict=True)}
    rec.update(
        s_max=float(s[0]), s_min=float(s[-1]),
        stable_rank=float(M.stable_rank(s)),
        spectral_entropy=float(M.spectral_entropy(s, normalized=True)),
    )
    if scalar_map is not None:
        rec.update(fidelity_stats(s, np.asarray(scalar_map(s), dtype=np.float64), rho))
    return rec


class SpectralMonitor:
    """Records spectral statistics of each orthogonalized matrix on sampled steps.

    Args:
        optimizer: a muonscope Muon (anything with ``register_orth_hook``), or any torch optimizer
            (watched through its step hooks; see the module docstring).
        every: sample every ``every``-th optimizer step (and step 1).
        quantiles: levels q; s_q is the singular value at descending rank ⌈q·r⌉.
        store: a :class:`~muonscope.spectra.store.RunStore` (or None to keep records in memory).
        source: "ns_input" (what NS sees) or "momentum" (the raw momentum buffer); for a watched
            optimizer "momentum", "update" or both (a tuple; the default).
        spectrum: "gram" (reuse NS's first Gram matrix) or "svd" (float64 SVD of the matrix).
        full_spectrum: also store the whole normalized spectrum as a list column.
        include: regex or predicate on parameter names; None monitors every Muon matrix.
        rho: failure level: a direction fails when NS lifts it to less than ρ.
        fidelity_every: every k-th sampled step also measure ‖NS(X) − polar(X)‖_F/√r (0: never).
        layer_map: {regex: layer_type} overriding the built-in name rules.
        n_blocks: number of transformer blocks (inferred from names when None).
        model_params: model size written to each record (default: store.meta["model_params"]).
        tensorboard: a ``SummaryWriter`` or a log directory; scalars per layer (needs tensorboard).
        keep_records: keep records in ``monitor.records`` (default: only when there is no store).
        model: for a watched optimizer: the model parameter names and matrix views come from
            (``infer_views(model)``).
        views: for a watched optimizer: views declared by name or regex, on top of the inferred ones.
        momentum_keys: for a watched optimizer: the state keys tried in order for the momentum buffer.
    """

    def __init__(self, optimizer, every: int = 10, quantiles: Iterable[float] = DEFAULT_QUANTILES,
                 store=None, source: str | tuple[str, ...] | None = None, full_spectrum: bool = False,
                 include: str | Callable[[str], bool] | None = None, *, spectrum: str = "gram",
                 rho: float = FAILURE_RHO, fidelity_every: int = 0, layer_map: Mapping[str, str] | None = None,
                 n_blocks: int | None = None, model_params: int | None = None, tensorboard=None,
                 keep_records: bool | None = None, model=None, views: Mapping[str, str] | None = None,
                 momentum_keys: Iterable[str] | None = None) -> None:
        watched = not hasattr(optimizer, "register_orth_hook")
        if watched:
            sources = (source,) if isinstance(source, str) else tuple(source or ("momentum", "update"))
            if not sources or any(x not in ("momentum", "update") for x in sources):
                raise ConfigError(f"a watched {type(optimizer).__name__} records 'momentum' and/or 'update', got {source!r}")
            source = sources[0] if len(sources) == 1 else sources
        elif source is None:
            source = "ns_input"
        if not (isinstance(every, int) and every >= 1):
            raise ConfigError(f"every must be a positive int, got {every!r}")
        self.quantiles = tuple(float(q) for q in quantiles)
        if not self.quantiles or any(not (0.0 < q <= 1.0) for q in self.quantiles):
            raise ConfigError(f"quantile levels must lie in (0, 1], got {self.quantiles}")
        if not watched and source not in ("ns_input", "momentum"):
            raise ConfigError(f"source must be 'ns_input' or 'momentum', got {source!r}")
        if spectrum not in ("gram", "svd"):
            raise ConfigError(f"spectrum must be 'gram' or 'svd', got {spectrum!r}")
        if not (rho > 0):
            raise ConfigError(f"rho must be positive, got {rho}")
        self.every, self.source, self.spectrum_mode = every, source, spectrum
        self.full_spectrum, self.rho, self.fidelity_every = full_spectrum, float(rho), int(fidelity_every)
        self.store = store
        if isinstance(include, str):
            pattern = re.compile(include)
            self._include = lambda name: bool(pattern.search(name))
        else:
            self._include = include
        self._watch = None
        if watched:
            from muonscope.spectra.watch import MOMENTUM_KEYS, StepWatch

            self._watch = StepWatch(optimizer, self._on_observation, every=every, model=model,
                                    include=self._include, momentum_keys=momentum_keys or MOMENTUM_KEYS)
            self.sources = (source,) if isinstance(source, str) else source
            from muonscope.optim.views import infer_views

            self._views = {**(infer_views(model) if model is not None else {}), **(views or {})}
            names = list(self._watch.names.values())
        else:
            names = [n for g in optimizer.param_groups for n in g.get("param_names", ())]
        self.layers = LayerIndex(names, layer_map, n_blocks)
        meta = getattr(store, "meta", {}) or {}
        self.model_params = int(model_params if model_params is not None else meta.get("model_params", -1))
        self.run_id = str(meta.get("run_id", ""))
        self.records: list[dict] = []
        self._keep = keep_records if keep_records is not None else store is None
        self._sampled_steps = 0
        self._last_step = None
        self._tb = self._make_tb(tensorboard)
        self._handle = self._watch if watched else optimizer.register_orth_hook(self)

    @staticmethod
    def _make_tb(tensorboard):
        if tensorboard is None or hasattr(tensorboard, "add_scalar"):
            return tensorboard
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ConfigError("tensorboard logging needs the 'tensorboard' extra: pip install 'muonscope[tensorboard]'") from exc
        return SummaryWriter(str(tensorboard))

    # --- hook protocol -------------------------------------------------------------------------
    def sampled(self, step: int) -> bool:
        return sampled(step, self.every)

    def wants_spectrum(self, step: int) -> bool:
        want = self.sampled(step)
        if want and step != self._last_step:
            self._last_step = step
            self._sampled_steps += 1
        return want and self.source == "ns_input" and self.spectrum_mode == "gram"

    def on_orthogonalize(self, event) -> None:
        if not self.sampled(event.step):
            return
        if self._include is not None and not self._include(event.name):
            return
        self.records_from_event(event)

    # --- measurement ---------------------------------------------------------------------------
    def _spectrum(self, event) -> tuple[np.ndarray, torch.Tensor]:
        X = event.momentum if self.source == "momentum" else event.matrix
        X = X.detach()
        if X.ndim != 2:
            X = X.reshape(X.shape[0], -1)
        if self.source == "ns_input" and self.spectrum_mode == "gram" and event.spectrum is not None:
            s = event.spectrum.detach().to("cpu", torch.float64).numpy()
        else:
            sv = torch.linalg.svdvals(X.to(torch.float64))
            s = (sv / sv.norm().clamp(min=torch.finfo(torch.float64).tiny)).cpu().numpy()
        return s, X

    def records_from_event(self, event) -> dict | None:
        s, X = self._spectrum(event)
        frob = float(torch.linalg.vector_norm(X.to(torch.float32)))
        if s.size == 0 or frob == 0.0 or not math.isfinite(frob):
            return None  # a zero (or empty) matrix has no spectrum to record
        info = self.layers(event.name)
        sched, steps = event.orthogonalizer.label
        rec = {
            "run_id": self.run_id, "step": int(event.step), "param": event.name,
            "layer_type": info.layer_type, "block": info.block, "rel_depth": info.rel_depth,
            "rows": int(X.shape[0]), "cols": int(X.shape[1]), "model_params": self.model_params,
            "expert": getattr(event, "expert", None) if getattr(event, "expert", None) is not None else info.expert,
            "frob_norm": frob, "ns_schedule": sched, "ns_steps": int(steps), "source": self.source,
            "ns_flops": int(event.orthogonalizer.flops(*X.shape)), "ns_matmuls": int(event.orthogonalizer.matmuls()),
            "process_rank": int(getattr(event, "process_rank", 0)),
        }
        rec.update(spectrum_record(s, self.quantiles, scalar_map=event.orthogonalizer.scalar_map, rho=self.rho))
        if self.fidelity_every and self._sampled_steps % self.fidelity_every == 0:
            rec["fidelity_err"] = self.fidelity_error(event)
        if self.full_spectrum:
            rec["spectrum"] = [float(x) for x in -np.sort(-s)]
        self._emit(rec)
        return rec

    def _emit(self, rec: dict) -> None:
        if self.store is not None:
            self.store.append_spectra([rec])
        if self._keep:
            self.records.append(rec)
        if self._tb is not None:
            tag = rec["param"] if rec["source"] in ("ns_input", "momentum") else f"{rec['param']}/{rec['source']}"
            for q in self.quantiles:
                self._tb.add_scalar(f"spectra/{tag}/{M.quantile_column(q)}", rec[M.quantile_column(q)], rec["step"])
            if "frac_failed" in rec:
                self._tb.add_scalar(f"spectra/{tag}/frac_failed", rec["frac_failed"], rec["step"])

    # --- watched (foreign) optimizers --------------------------------------------------------------
    def _on_observation(self, obs) -> None:
        """Momentum and update records for each matrix of one watched parameter's view."""
        from muonscope.spectra import watch as W

        if obs.step != self._last_step:
            self._last_step = obs.step
            self._sampled_steps += 1
        claim = W.claimed_ns(obs.optimizer, obs.group, obs.name)
        view = W.view_of(obs.name, obs.param.shape, self._views)
        mode = self.spectrum_mode
        updates = W.named_matrices(obs.name, obs.update, view)
        moms = W.named_matrices(obs.name, obs.momentum, view) if obs.momentum is not None else [None] * len(updates)
        inputs = [W.named_matrices(obs.name, x, view) for x in W.ns_inputs(obs.group, obs.grad, obs.momentum)]
        for i, (name, expert, U) in enumerate(updates):
            info = self.layers(name)
            base = {"run_id": self.run_id, "step": int(obs.step), "param": name, "layer_type": info.layer_type,
                    "block": info.block, "rel_depth": info.rel_depth, "rows": int(U.shape[0]), "cols": int(U.shape[1]),
                    "model_params": self.model_params, "expert": expert if expert is not None else info.expert,
                    "ns_schedule": claim.schedule, "ns_steps": claim.steps, "process_rank": 0}
            s_in = W.normalized_spectrum(inputs[0][i][2], mode) if inputs else np.zeros(0)
            for src in self.sources:
                X = U if src == "update" else (moms[i][2] if moms[i] is not None else None)
                if X is None:
                    continue
                s = W.normalized_spectrum(X, mode)
                if s.size == 0:
                    continue
                rec = dict(base, source=src, frob_norm=float(torch.linalg.vector_norm(X.to(torch.float32))))
                rec.update(spectrum_record(s, self.quantiles, scalar_map=claim.scalar_map if src == "momentum" else None,
                                           rho=self.rho))
                if src == "update" and s_in.size == s.size:
                    rec["ns_pred_dev"] = W.prediction_deviation(s, s_in, claim)
                if self.full_spectrum:
                    rec["spectrum"] = [float(x) for x in s]
                self._emit(rec)

    @staticmethod
    def fidelity_error(event) -> float:
        """‖O − polar(X)‖_F / √r for the update O the orthogonalizer produced from X."""
        from muonscope.orth.exact import polar_exact

        X = event.matrix.detach().reshape(event.matrix.shape[0], -1).to(torch.float64)
        O = event.update.detach().reshape(X.shape).to(torch.float64)
        r = min(X.shape)
        return float(torch.linalg.matrix_norm(O - polar_exact(X)) / math.sqrt(r))

    def close(self) -> None:
        """Detach from the optimizer and flush the store."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.store is not None:
            self.store.flush()
        if self._tb is not None:
            self._tb.flush()
