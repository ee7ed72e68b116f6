"""Matrix Newton-Schulz iteration toward the polar factor UVᵀ.

For G (…, m, n) with m ≤ n: X₀ = G / max(‖G‖_F · f, eps), then per step A = X Xᵀ,
X ← a X + (b A + c A²) X; a tall G (m > n) uses A = XᵀX and X ← a X + X (b A + c A²), the same map
on the small side without transposing anything in memory. Each singular value follows the scalar map of
:mod:`muonscope.orth.analysis`; singular vectors are kept. Three products per step, fused with
``addmm``/``baddbmm`` so the affine parts cost no extra passes.

Compute dtype (``dtype=None``): :func:`default_compute_dtype` — bf16 where bf16 products are fast
(CUDA; a CPU with native bf16 matrix units or whose bf16 GEMM measures at least as fast as fp32),
fp32 elsewhere; ``MUONSCOPE_NS_DTYPE`` overrides it. The Gram matrix handed back for spectra is
always formed in fp32 or better.
"""

from __future__ import annotations

import functools
import math
import os
import time

import torch

from muonscope.errors import ConfigError, ShapeError
from muonscope.orth.schedules import Schedule, get_schedule

NS_DTYPE_ENV = "MUONSCOPE_NS_DTYPE"
_DTYPE_NAMES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
    "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
}
PROBE_SIZE = 256  # n of the n×n products timed by the CPU probe (≈ 34 MFLOP each)


def parse_dtype(value: str | torch.dtype, where: str = NS_DTYPE_ENV) -> torch.dtype:
    """A floating dtype from a torch dtype or a name ("bf16", "float32", "torch.float16", …)."""
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return value
    key = str(value).strip().lower().removeprefix("torch.")
    try:
        return _DTYPE_NAMES[key]
    except KeyError:
        raise ConfigError(f"{where}={value!r} is not a floating dtype; use one of bf16, fp16, fp32, fp64") from None


def bf16_is_fast(t_bf16: float, t_fp32: float, *, native: bool = False) -> bool:
    """Decision rule of the CPU probe: bf16 NS iff the CPU has native bf16 matrix instructions
    (AVX512-BF16 / AMX) or a bf16 product timed at most as long as the same fp32 product."""
    if native:
        return True
    return bool(math.isfinite(t_bf16) and math.isfinite(t_fp32) and t_bf16 <= t_fp32)


def _native_cpu_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if callable(fn) and fn():
                return True
        except Exception:  # noqa: BLE001 - private helpers; absence or failure means "not known native"
            pass
    return "BF16" in str(torch.backends.cpu.get_cpu_capability()).upper()


def time_matmul(dtype: torch.dtype, n: int = PROBE_SIZE, repeats: int = 3) -> float:
    """Fastest of ``repeats`` timed n×n CPU products in ``dtype`` (seconds), after one warm-up."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


@functools.cache
def cpu_bf16_fast() -> bool:
    """Whether bf16 NS is the default on this process's CPU (decided once, cached): native bf16
    instructions, else :func:`bf16_is_fast` on timed products — 128² first (an emulated bf16 GEMM,
    ≳ 4× slower, stops there, ≈ 15 ms), then best of 3 at 256² (≈ 1 ms where bf16 is fast)."""
    if _native_cpu_bf16():
        return True
    if time_matmul(torch.bfloat16, 128, 1) > 4 * time_matmul(torch.float32, 128, 1):
        return False
    return bf16_is_fast(time_matmul(torch.bfloat16), time_matmul(torch.float32))


def default_compute_dtype(device: torch.device | str) -> torch.dtype:
    """NS compute dtype when none is given: ``MUONSCOPE_NS_DTYPE`` if set, else bf16 on
    accelerators and on CPUs where bf16 products are fast (:func:`cpu_bf16_fast`), else fp32."""
    env = os.environ.get(NS_DTYPE_ENV, "").strip()
    if env and env.lower() != "auto":
        return parse_dtype(env)
    if torch.device(device).type != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if cpu_bf16_fast() else torch.float32


def normalize_(X: torch.Tensor, scale: float, eps: float, *, owned: bool) -> torch.Tensor:
    """X / max(‖X‖_F · scale, eps) per matrix of a (…, m, n) tensor (in place when ``owned``).

    Overflow-safe: when ‖X‖_F overflows (entries ≳ 1e19 in fp32/bf16), X is first multiplied by
    2^(−e), e the exponent of max|x|; a power-of-two scaling is exact, so every finite case
    rounds exactly as the plain division does.
    """
    dims = (-2, -1)
    norm = torch.linalg.vector_norm(X, dim=dims, keepdim=True)
    if not bool(torch.isfinite(norm).all()):
        amax = torch.linalg.vector_norm(X, ord=math.inf, dim=dims, keepdim=True)
        amax = torch.where(torch.isfinite(amax) & (amax > 0), amax, torch.ones_like(amax))
        _, e = torch.frexp(amax)
        pow2 = torch.ldexp(torch.ones_like(amax), -e)
        X = X.mul_(pow2) if owned else X * pow2
        owned = True
        norm = torch.linalg.vector_norm(X, dim=dims, keepdim=True)
    if scale != 1.0:
        norm = norm * scale
    return X.div_(norm.clamp_(min=eps)) if owned else X / norm.clamp_(min=eps)


def prepare(G: torch.Tensor, dtype: torch.dtype, scale: float, eps: float, *, overwrite: bool = False):
    """The normalized NS input: G (…, m, n) as (B, m, n) or (m, n) in ``dtype``.

    Returns ``(X, tall, lead)``; ``tall`` (m > n) means products run on the right Gram side
    (XᵀX), so no matrix is ever transposed in memory. Casts first (so normalization rounds in the
    compute dtype) except into fp16, whose narrow range could overflow: there it normalizes, then
    casts. ``overwrite``: G is scratch the caller owns, so it is normalized in place.
    """
    if G.ndim < 2:
        raise ShapeError(f"newton_schulz needs a (..., m, n) tensor, got shape {tuple(G.shape)}")
    if G.is_complex():
        raise ShapeError("newton_schulz works on real tensors only")
    tall = G.shape[-2] > G.shape[-1]
    lead = G.shape[:-2]
    X = G.reshape(math.prod(lead), *G.shape[-2:]) if len(lead) != 0 else G
    if X.numel() == 0:
        return X.to(dtype).clone(), tall, lead
    if dtype == torch.float16 and X.dtype != dtype:
        return normalize_(X, scale, eps, owned=False).to(dtype), tall, lead
    owned = X.dtype != dtype
    X = X.to(dtype=dtype) if owned else X
    return normalize_(X, scale, eps, owned=owned or overwrite), tall, lead


def small_gram(X: torch.Tensor, tall: bool) -> torch.Tensor:
    """XXᵀ (wide) or XᵀX (tall): the r×r Gram matrix, r = min(m, n)."""
    return X.mT @ X if tall else X @ X.mT


def side_mm(X: torch.Tensor, B: torch.Tensor, tall: bool, beta: float) -> torch.Tensor:
    """beta·X + B·X (wide) or beta·X + X·B (tall) in one fused GEMM (B r×r)."""
    fn = torch.baddbmm if X.ndim == 3 else torch.addmm
    return fn(X, X, B, beta=beta) if tall else fn(X, B, X, beta=beta)


def gram_fp32(G: torch.Tensor, X: torch.Tensor, tall: bool, scale: float, eps: float) -> torch.Tensor:
    """The Gram matrix of the normalized input in fp32 at least: from ``X`` itself when it is fp32
    or wider, else re-normalized from ``G`` in fp32 (one extra product, on sampled steps only)."""
    if X.dtype.itemsize >= 4:
        return small_gram(X, tall)
    Y = G.reshape(X.shape)
    Y = Y.to(torch.float32) if Y.dtype != torch.float32 else Y.clone()
    return small_gram(normalize_(Y, scale, eps, owned=True), tall)


def start(G: torch.Tensor, schedule: str | Schedule, steps: int | None, dtype: torch.dtype, eps: float,
          overwrite: bool):
    """What every NS variant begins with: (schedule, steps, per-step coefficients, the normalized
    input X, tall, lead) — see :func:`prepare`."""
    sched = get_schedule(schedule)
    steps = sched.default_steps if steps is None else steps
    X, tall, lead = prepare(G, dtype, sched.safety, eps, overwrite=overwrite)
    return sched, steps, sched.step_coefficients(steps), X, tall, lead


def empty_gram(X: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The (…, r, r) zero Gram matrix of an empty input, in fp32 or wider."""
    r = min(X.shape[-2:])
    return X.new_zeros(*X.shape[:-2], r, r, dtype=torch.promote_types(dtype, torch.float32))


def with_lead(gram: torch.Tensor, lead) -> torch.Tensor:
    """A (B, r, r) Gram matrix back under the input's leading dimensions."""
    return gram.reshape(*lead, *gram.shape[-2:]) if len(lead) != 0 else gram


def finish(out: torch.Tensor, lead, out_dtype: torch.dtype) -> torch.Tensor:
    out = out.reshape(*lead, *out.shape[-2:]) if len(lead) != 0 else out
    return out.to(out_dtype)


def newton_schulz(
    G: torch.Tensor,
    schedule: str | Schedule = "jordan",
    steps: int | None = None,
    *,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
    return_gram: bool = False,
    overwrite: bool = False,
):
    """Approximate polar factor of ``G`` (…, m, n) by ``steps`` NS steps of ``schedule``.

    Returns a tensor of G's shape and dtype. With ``return_gram=True`` also returns the first
    step's Gram matrix rescaled to A₀ = G Gᵀ/‖G‖_F² (GᵀG for tall G; shape (…, r, r),
    r = min(m, n), in fp32 or the compute dtype if wider), whose eigenvalues are the squared
    normalized singular values s². A zero matrix maps to zeros (the eps clamp), never NaN.
    Tall matrices iterate X ← aX + X(bA + cA²) with A = XᵀX (the same map, nothing transposed).
    ``overwrite=True`` lets it normalize G in place (G is scratch the caller owns).
    """
    dtype = dtype or default_compute_dtype(G.device)
    sched, steps, coeffs, X, tall, lead = start(G, schedule, steps, dtype, eps, overwrite)
    gram = None
    if X.numel() == 0:
        if return_gram:
            gram = empty_gram(X, dtype)
    else:
        wide = X.dtype.itemsize >= 4  # the first step's A is the Gram matrix; else form it in fp32
        if return_gram and (not wide or not coeffs):
            gram = gram_fp32(G, X, tall, sched.safety, eps) * (sched.safety**2)
        mm = torch.baddbmm if X.ndim == 3 else torch.addmm
        for i, (a, b, c) in enumerate(coeffs):
            A = small_gram(X, tall)
            if i == 0 and return_gram and wide:
                gram = A * (sched.safety**2)
            B = mm(A, A, A, beta=b, alpha=c)  # bA + cA²
            X = side_mm(X, B, tall, a)  # aX + BX (wide) or aX + XB (tall)
    out = finish(X, lead, G.dtype)
    return (out, with_lead(gram, lead)) if return_gram else out
