"""Underdetermined matrix sensing: the regression model of the spectral-dynamics experiments.

A weight W ∈ R^{p×d} is observed through n linear measurements yᵢ = ⟨Aᵢ, W*⟩, i = 1…n, with
Aᵢ ∈ R^{p×d} of i.i.d. N(0, 1)/√p entries and a target W* = U diag(σ) Vᵀ of rank k whose singular
values are spread linearly from κ down to 1 (Haar-random U, V). With n < p·d the interpolants
{W : A(W) = y} form an affine subspace of dimension p·d − n. The loss is L(W) = ½‖A(W) − y‖²,
its gradient ∇L = Σᵢ rᵢAᵢ with residuals rᵢ = ⟨Aᵢ, W⟩ − yᵢ.

Everything is float64 and batched over seeds: tensors carry a leading seed axis S, and seed s is
generated from ``torch.Generator().manual_seed(s)`` alone, so any subset of seeds reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from muonscope.errors import ConfigError

DTYPE = torch.float64


@dataclass(frozen=True)
class SensingConfig:
    """Shape of a sensing problem: W is rows×cols (p×d), ``measurements`` = n, target rank k."""

    rows: int = 50
    cols: int = 20
    measurements: int = 100
    rank: int | None = None  # None: min(rows, cols)
    kappa: float = 5.0

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "measurements"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"sensing {name} must be a positive int, got {v!r}")
        if self.rank is not None and not (isinstance(self.rank, int) and 1 <= self.rank <= min(self.rows, self.cols)):
            raise ConfigError(f"target rank must be an int in [1, {min(self.rows, self.cols)}], got {self.rank!r}")
        if not (self.kappa >= 1.0):
            raise ConfigError(f"kappa (largest target singular value; the smallest is 1) must be >= 1, got {self.kappa}")

    @property
    def target_rank(self) -> int:
        return min(self.rows, self.cols) if self.rank is None else self.rank

    @property
    def r(self) -> int:
        """min(p, d): the number of singular values of W."""
        return min(self.rows, self.cols)

    @property
    def underdetermined(self) -> bool:
        """Fewer measurements than entries: the interpolants form an affine subspace."""
        return self.measurements < self.rows * self.cols

    def to_dict(self) -> dict:
        return {**asdict(self), "rank": self.target_rank}


def _haar_frame(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=DTYPE))
    return Q * torch.sign(torch.diagonal(R)).unsqueeze(0)  # Haar measure (sign-fixed QR)


class SensingProblem:
    """A batch of sensing problems, one per seed, sharing one :class:`SensingConfig`."""

    def __init__(self, config: SensingConfig, A: torch.Tensor, y: torch.Tensor, W_star: torch.Tensor,
                 seeds: Sequence[int]) -> None:
        self.config = config
        self.A = A  # (S, n, p, d)
        self.y = y  # (S, n)
        self.W_star = W_star  # (S, p, d)
        self.seeds = tuple(int(s) for s in seeds)
        S, n, p, d = A.shape
        self._Af = A.reshape(S, n, p * d)  # measurement operator as an n×(pd) matrix per seed

    @classmethod
    def generate(cls, config: SensingConfig, seeds: Sequence[int]) -> SensingProblem:
        """Draw Aᵢ, U, V for each seed from its own generator."""
        seeds = list(seeds)
        if not seeds:
            raise ConfigError("need at least one seed")
        p, d, n, k = config.rows, config.cols, config.measurements, config.target_rank
        sv = torch.linspace(config.kappa, 1.0, k, dtype=DTYPE)
        As, Ws = [], []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            A = torch.randn(n, p, d, generator=g, dtype=DTYPE) / p**0.5
            U = _haar_frame(p, k, g)
            V = _haar_frame(d, k, g)
            As.append(A)
            Ws.append((U * sv) @ V.T)
        A = torch.stack(As)
        W_star = torch.stack(Ws)
        y = torch.einsum("snij,sij->sn", A, W_star)
        return cls(config, A, y, W_star, seeds)

    @property
    def batch(self) -> int:
        return len(self.seeds)

    @property
    def shape(self) -> tuple[int, int]:
        return self.config.rows, self.config.cols

    def measure(self, W: torch.Tensor) -> torch.Tensor:
        """A(W): (S, n)."""
        return torch.bmm(self._Af, W.reshape(self.batch, -1, 1)).squeeze(-1)

    def residual(self, W: torch.Tensor) -> torch.Tensor:
        return self.measure(W) - self.y

    def loss(self, W: torch.Tensor) -> torch.Tensor:
        """½‖A(W) − y‖² per seed: (S,)."""
        return 0.5 * self.residual(W).pow(2).sum(-1)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """A*(r) = Σᵢ rᵢAᵢ: (S, p, d)."""
        return torch.bmm(r.unsqueeze(1), self._Af).reshape(self.batch, *self.shape)

    def gradient(self, W: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.residual(W))

    def relative_residual(self, W: torch.Tensor) -> torch.Tensor:
        """‖A(W) − y‖/‖y‖ per seed."""
        return self.residual(W).norm(dim=-1) / self.y.norm(dim=-1)

    def smoothness(self) -> torch.Tensor:
        """λ_max(A Aᵀ) per seed: the Lipschitz constant of ∇L (GD is stable for lr < 2/λ_max)."""
        return torch.linalg.eigvalsh(self._Af @ self._Af.mT)[..., -1]

    def project(self, W: torch.Tensor) -> torch.Tensor:
        """Nearest interpolant in Frobenius norm: W − A⁺(A(W) − y) (underdetermined problems only:
        A then has full row rank almost surely)."""
        if not self.config.underdetermined:
            raise ConfigError("interpolants exist only for underdetermined problems (measurements < rows*cols)")
        r = self.residual(W)
        gram = self._Af @ self._Af.mT
        lam = torch.linalg.solve(gram, r.unsqueeze(-1)).squeeze(-1)
        return W - self.adjoint(lam)

    def min_frobenius(self) -> torch.Tensor:
        """The minimum-Frobenius-norm interpolant A⁺y (where GD from W = 0 converges)."""
        return self.project(torch.zeros(self.batch, *self.shape, dtype=DTYPE))

    def select(self, index: int) -> SensingProblem:
        """The single-seed problem at batch position ``index``."""
        sl = slice(index, index + 1)
        return SensingProblem(self.config, self.A[sl], self.y[sl], self.W_star[sl], [self.seeds[index]])
