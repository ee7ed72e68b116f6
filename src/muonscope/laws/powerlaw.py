"""Power laws s_q(M) = C·M^(−α) across model sizes M, fitted in log space.

With x = log M and y = log s: y = log C − α·x.

- OLS gives α, log C, R², residuals and the classical standard error; the t-interval
  α ± t_{n−2}·se and the prediction interval for a new model at x₀,
  ŷ(x₀) ± t_{n−2}·σ̂·√(1 + 1/n + (x₀ − x̄)²/Sxx), use n − 2 residual degrees of freedom.
- A robust fit uses Huber's loss (k = 1.345, scale = 1.4826·MAD of the residuals) by iteratively
  reweighted least squares.
- Percentile intervals for α and log C come from a two-stage bootstrap: draw the distinct sizes
  with replacement, then, within each drawn size, its runs (seeds) with replacement; draws with
  fewer than two distinct sizes are discarded. With 3–4 sizes these intervals are coarse (and
  tend to be too narrow); the t-interval is reported next to them.
- Shared exponent: the quantiles of one matrix share α iff every log-ratio log(s_q/s_ref) is
  independent of log M. Each ratio's slope on log M is t-tested (the run-level fluctuation common
  to all quantiles of a matrix cancels in the ratio) and the p-values are Bonferroni-combined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import stdtr, stdtrit

from muonscope.errors import FitError

HUBER_K = 1.345


@dataclass(frozen=True)
class Prediction:
    """Predicted s at a model size, with a two-sided prediction interval at ``level``."""

    model_params: float
    center: float
    low: float
    high: float
    level: float


def _ols(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float]:
    """(slope, intercept) of (weighted) least squares y ≈ intercept + slope·x."""
    w = np.ones_like(x) if w is None else w
    sw = w.sum()
    xm, ym = (w @ x) / sw, (w @ y) / sw
    xc = x - xm
    slope = float((w * xc) @ (y - ym)) / float((w * xc) @ xc)
    return slope, float(ym - slope * xm)


def huber_fit(x: np.ndarray, y: np.ndarray, k: float = HUBER_K, max_iter: int = 100) -> tuple[float, float]:
    """(slope, intercept) minimizing Σ Huber_k(rᵢ/ŝ), ŝ = 1.4826·MAD(r), by IRLS."""
    slope, icpt = _ols(x, y)
    for _ in range(max_iter):
        r = y - icpt - slope * x
        scale = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        if scale <= 1e-15 * max(1.0, float(np.abs(y).max())):
            break
        a = np.abs(r) / scale
        w = np.where(a <= k, 1.0, k / np.maximum(a, 1e-300))
        new = _ols(x, y, w)
        if abs(new[0] - slope) <= 1e-12 * (1 + abs(slope)) and abs(new[1] - icpt) <= 1e-12 * (1 + abs(icpt)):
            slope, icpt = new
            break
        slope, icpt = new
    return slope, icpt


def _bootstrap(x: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, 2) array of (slope, intercept) from the sizes-then-seeds bootstrap."""
    sizes, inv = np.unique(x, return_inverse=True)
    members = [np.nonzero(inv == j)[0] for j in range(sizes.size)]
    n_s = sizes.size
    picks = rng.integers(0, n_s, size=(n_boot, n_s))
    counts = np.zeros((n_boot, x.size))
    for j, mem in enumerate(members):
        times = (picks == j).sum(axis=1)  # how often size j was drawn, per replicate
        for t in range(1, int(times.max(initial=0)) + 1):
            rows = np.nonzero(times >= t)[0]
            draw = mem[rng.integers(0, mem.size, size=(rows.size, mem.size))]
            np.add.at(counts, (np.repeat(rows, mem.size), draw.ravel()), 1.0)
    distinct = (np.stack([(counts[:, m].sum(axis=1) > 0) for m in members], axis=1)).sum(axis=1)
    counts = counts[distinct >= 2]
    sw = counts.sum(axis=1)
    xm = counts @ x / sw
    ym = counts @ y / sw
    sxy = (counts * (x[None] - xm[:, None]) * (y[None] - ym[:, None])).sum(axis=1)
    sxx = (counts * (x[None] - xm[:, None]) ** 2).sum(axis=1)
    slope = sxy / sxx
    return np.stack([slope, ym - slope * xm], axis=1)


@dataclass(frozen=True)
class PowerLawFit:
    """log s = log C − α·log M for one (layer_type, rel_depth, q) group (natural logs)."""

    layer_type: str
    rel_depth: float  # NaN when unknown
    q: float
    sizes: tuple[float, ...]  # M of each point (one point per run)
    values: tuple[float, ...]  # stabilized s of each point
    run_ids: tuple[str, ...]
    alpha: float
    log_c: float
    alpha_se: float
    r2: float
    sigma: float  # residual standard deviation (log units), n − 2 dof
    alpha_ci: tuple[float, float]  # bootstrap percentile interval
    log_c_ci: tuple[float, float]
    alpha_ci_t: tuple[float, float]  # classical t-interval
    alpha_huber: float
    log_c_huber: float
    level: float = 0.95
    n_boot_used: int = 0
    r_exponent: float = float("nan")  # β in r = min(rows, cols) ∝ M^β (NaN if unknown)
    value_ci: tuple[tuple[float, float], ...] = field(default=(), compare=False)  # per point

    @property
    def c(self) -> float:
        return math.exp(self.log_c)

    @property
    def n_points(self) -> int:
        return len(self.sizes)

    @property
    def n_sizes(self) -> int:
        return len(set(self.sizes))

    @property
    def df(self) -> int:
        return self.n_points - 2

    @property
    def alpha_flat(self) -> float:
        """Exponent of a spectrum whose shape does not change with M: s = 1/√r ∝ M^(−β/2)."""
        return self.r_exponent / 2

    def _xy(self) -> tuple[np.ndarray, np.ndarray]:
        return np.log(np.asarray(self.sizes, dtype=np.float64)), np.log(np.asarray(self.values, dtype=np.float64))

    @property
    def residuals(self) -> np.ndarray:
        """y − ŷ of the OLS fit, per point (log units)."""
        x, y = self._xy()
        return y - (self.log_c - self.alpha * x)

    def predict(self, model_params, level: float | None = None) -> Prediction:
        """Point prediction C·M^(−α) and the t prediction interval for a new model of size M
        (all three clipped at 1, the largest possible normalized singular value)."""
        level = self.level if level is None else float(level)
        if not (0 < level < 1):
            raise FitError(f"prediction level must lie in (0, 1), got {level}")
        m = float(model_params)
        if not (m > 0 and math.isfinite(m)):
            raise FitError(f"model size must be a positive number of parameters, got {model_params!r}")
        x, _ = self._xy()
        x0 = math.log(m)
        xc = x - x.mean()
        half = float(stdtrit(self.df, 0.5 + level / 2)) * self.sigma * math.sqrt(
            1 + 1 / x.size + (x0 - x.mean()) ** 2 / float(xc @ xc))
        yhat = self.log_c - self.alpha * x0
        # normalized singular values never exceed 1: clip the band there
        return Prediction(m, min(math.exp(yhat), 1.0), min(math.exp(yhat - half), 1.0),
                          min(math.exp(yhat + half), 1.0), level)

    def band(self, model_params, level: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(center, low, high) prediction band over an array of sizes (for log-log plots)."""
        preds = [self.predict(m, level) for m in np.atleast_1d(model_params)]
        return tuple(np.array([getattr(p, k) for p in preds]) for k in ("center", "low", "high"))


def fit_power_law(sizes, values, *, run_ids=None, layer_type: str = "", rel_depth: float = float("nan"),
                  q: float = float("nan"), level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                  r_exponent: float = float("nan"), value_ci=()) -> PowerLawFit:
    """Fit s = C·M^(−α) to points (M_i, s_i); several points per size are seeds.

    Raises :class:`FitError` for fewer than 3 distinct sizes, non-positive values or NaNs.
    """
    what = f"{layer_type or 'power law'}" + (f" at depth {rel_depth:g}" if np.isfinite(rel_depth) else "") + \
        (f", q={q:g}" if np.isfinite(q) else "")
    M = np.asarray(sizes, dtype=np.float64).ravel()
    s = np.asarray(values, dtype=np.float64).ravel()
    if M.size != s.size:
        raise FitError(f"{what}: {M.size} sizes but {s.size} values")
    if np.isnan(M).any() or np.isnan(s).any():
        raise FitError(f"{what}: NaN in sizes or values; drop or re-measure the affected runs")
    if (M <= 0).any() or not np.isfinite(M).all():
        raise FitError(f"{what}: model sizes must be positive and finite, got {sorted(set(M.tolist()))}")
    if (s <= 0).any() or not np.isfinite(s).all():
        raise FitError(f"{what}: values must be positive and finite for a log-log fit, got min {s.min():g}")
    n_sizes = np.unique(M).size
    if n_sizes < 3:
        raise FitError(f"{what}: needs at least 3 model sizes, got {n_sizes} "
                       f"({', '.join(f'{m:.3g}' for m in np.unique(M))}); add runs at more sizes")
    if not (0 < level < 1):
        raise FitError(f"interval level must lie in (0, 1), got {level}")
    x, y = np.log(M), np.log(s)
    slope, icpt = _ols(x, y)
    resid = y - icpt - slope * x
    n = x.size
    xc = x - x.mean()
    sxx = float(xc @ xc)
    rss = float(resid @ resid)
    tss = float(((y - y.mean()) ** 2).sum())
    sigma = math.sqrt(rss / (n - 2))
    se = sigma / math.sqrt(sxx)
    tq = float(stdtrit(n - 2, 0.5 + level / 2))
    hs, hi = huber_fit(x, y)
    rng = np.random.default_rng(seed)
    boot = _bootstrap(x, y, n_boot, rng)
    a = (1 - level) / 2
    a_lo, a_hi = np.quantile(-boot[:, 0], [a, 1 - a])
    c_lo, c_hi = np.quantile(boot[:, 1], [a, 1 - a])
    return PowerLawFit(
        layer_type=str(layer_type), rel_depth=float(rel_depth), q=float(q),
        sizes=tuple(M.tolist()), values=tuple(s.tolist()),
        run_ids=tuple(str(r) for r in (run_ids if run_ids is not None else [""] * n)),
        alpha=-slope, log_c=icpt, alpha_se=se, r2=1 - rss / tss if tss > 0 else 1.0, sigma=sigma,
        alpha_ci=(float(a_lo), float(a_hi)), log_c_ci=(float(c_lo), float(c_hi)),
        alpha_ci_t=(-slope - tq * se, -slope + tq * se), alpha_huber=-hs, log_c_huber=hi,
        level=float(level), n_boot_used=int(boot.shape[0]), r_exponent=float(r_exponent),
        value_ci=tuple(tuple(map(float, v)) for v in value_ci),
    )


@dataclass(frozen=True)
class SharedExponentTest:
    """Do the quantiles of one matrix group share α? (log-ratio slopes, Bonferroni)."""

    layer_type: str
    rel_depth: float
    ref_q: float
    qs: tuple[float, ...]
    alphas: tuple[float, ...]  # per q (OLS on the runs used here)
    slopes: tuple[float, ...]  # α_q − α_ref per q (0 for ref)
    p_values: tuple[float, ...]  # per q (NaN for ref)
    p_value: float  # Bonferroni-combined
    n_runs: int
    shared: bool  # p_value ≥ 0.05

    @property
    def spread(self) -> float:
        return max(self.alphas) - min(self.alphas)


def shared_exponent_test(sizes, values_by_q: dict[float, np.ndarray], *, layer_type: str = "",
                         rel_depth: float = float("nan"), alpha_level: float = 0.05) -> SharedExponentTest:
    """Test H₀: α_q is the same for every q, from per-run values (rows aligned across q)."""
    qs = tuple(sorted(values_by_q))
    if len(qs) < 2:
        raise FitError("the shared-exponent test needs at least two quantile levels")
    x = np.log(np.asarray(sizes, dtype=np.float64))
    Y = {q: np.log(np.asarray(values_by_q[q], dtype=np.float64)) for q in qs}
    if np.unique(x).size < 3:
        raise FitError("the shared-exponent test needs runs at 3 or more model sizes")
    ref = 0.5 if 0.5 in qs else qs[len(qs) // 2]
    n = x.size
    alphas, slopes, pvals = [], [], []
    for q in qs:
        alphas.append(-_ols(x, Y[q])[0])
        if q == ref:
            slopes.append(0.0)
            pvals.append(float("nan"))
            continue
        d = Y[q] - Y[ref]
        b, a0 = _ols(x, d)
        r = d - a0 - b * x
        xc = x - x.mean()
        se = math.sqrt(float(r @ r) / (n - 2) / float(xc @ xc))
        if se == 0:
            p = 0.0 if abs(b) > 1e-12 else 1.0
        else:
            p = float(2 * stdtr(n - 2, -abs(b) / se))
        slopes.append(-b)
        pvals.append(p)
    finite = [p for p in pvals if not math.isnan(p)]
    p_all = min(1.0, len(finite) * min(finite))
    return SharedExponentTest(str(layer_type), float(rel_depth), ref, qs, tuple(alphas), tuple(slopes),
                              tuple(pvals), p_all, n, bool(p_all >= alpha_level))
