"""Small models and reproductions of real-world Muon failures, for the audit's demo and tests.

``TinyLM``: embeddings, causal attention (q, k, v, o) and an MLP of ``nn.Linear``s, a head.
``MixedLM``: the same attention plus the layouts Muon setups get wrong: a GPT-2-style ``Conv1D``
MLP (weights stored (in, out)), a causal ``nn.Conv1d`` token mixer (kernel (out, in, k)) and an
MoE layer with a router and fused 3-D expert stacks (E, out, in).

:class:`ReferenceMuon` is the documented Muon rule (momentum B ← lerp(B, G, 1−β), Nesterov input
lerp(G, B, β), NS on each (out, in) matrix of the parameter's view, W ← W(1 − lr·wd) −
lr·√max(1, out/in)·O) with switches that reproduce failure classes seen in public bug threads:
``skip_ns`` (momentum SGD under the Muon name), ``flatten_stacks`` (an expert stack orthogonalized
as one flattened matrix), ``scale_from_storage`` (the lr scale read from the stored shape[:2]:
wrong for ``Conv1D`` (in, out) weights and conv kernels).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from muonscope.optim.functional import lr_ratio
from muonscope.optim.views import infer_views, matrices
from muonscope.orth.orthogonalizers import make_orthogonalizer
from muonscope.orth.schedules import JORDAN, Schedule, get_schedule
from muonscope.spectra.watch import view_of

VOCAB, SEQ = 32, 16


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D`` layout: y = x W + b with W stored (in=nx, out=nf)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class Attention(nn.Module):
    def __init__(self, d: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = (f(x).view(B, T, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, D))


class Experts(nn.Module):
    """Fused expert stacks gate_up_proj (E, 2h, d) and down_proj (E, d, h), top-1 routing."""

    def __init__(self, d: int, hidden: int, n: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(n, 2 * hidden, d) / math.sqrt(d))
        self.down_proj = nn.Parameter(torch.randn(n, d, hidden) / math.sqrt(hidden))

    def forward(self, x, idx):
        h = torch.einsum("nd,nfd->nf", x, self.gate_up_proj[idx])
        a, b = h.chunk(2, dim=-1)
        return torch.einsum("nh,ndh->nd", F.silu(a) * b, self.down_proj[idx])


class MoE(nn.Module):
    def __init__(self, d: int, n: int = 4) -> None:
        super().__init__()
        self.gate = nn.Linear(d, n, bias=False)
        self.experts = Experts(d, d, n)

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        w = self.gate(flat).softmax(-1)
        top, idx = w.max(-1)
        return (self.experts(flat, idx) * top[:, None]).view_as(x)


class Block(nn.Module):
    def __init__(self, d: int, mixed: bool) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d)
        self.mixed = mixed
        if mixed:
            self.mlp = nn.Module()
            self.mlp.c_fc, self.mlp.c_proj = Conv1D(4 * d, d), Conv1D(d, 4 * d)
            self.conv = nn.Conv1d(d, 4 * d, 3)
            self.ln3, self.ln4 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.moe = MoE(d)
        else:
            self.mlp = nn.Module()
            self.mlp.up, self.mlp.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        h = self.ln2(x)
        if not self.mixed:
            return x + self.mlp.down(F.gelu(self.mlp.up(h)))
        x = x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(h)))
        c = self.conv(F.pad(self.ln3(x).transpose(1, 2), (2, 0)))  # causal
        a, b = F.glu(c, dim=1).chunk(2, dim=1)
        x = x + (a + b).transpose(1, 2)
        return x + self.moe(self.ln4(x))


class TinyLM(nn.Module):
    """A two-block causal LM: ``model(tokens, targets)`` returns the mean cross-entropy."""

    def __init__(self, d: int = 32, n_blocks: int = 2, mixed: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList(Block(d, mixed) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB, bias=False)

    def forward(self, tokens, targets):
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x)
        return F.cross_entropy(self.head(self.norm(x)).flatten(0, 1), targets.flatten())


def MixedLM(d: int = 16, n_blocks: int = 1) -> TinyLM:
    """TinyLM with Conv1D MLPs, a conv token mixer and an MoE layer per block."""
    return TinyLM(d, n_blocks, mixed=True)


def batches(n: int = 4, batch: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` (tokens, next-token targets) batches of a fixed random sequence task."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = torch.randint(0, VOCAB, (batch, SEQ + 1), generator=g)
        out.append((t[:, :-1], t[:, 1:]))
    return out


class ReferenceMuon(torch.optim.Optimizer):
    """The documented Muon rule over named parameters, with failure switches (module docstring)."""

    def __init__(self, named_params, model: nn.Module | None = None, lr: float = 0.02, weight_decay: float = 0.0,
                 momentum: float = 0.95, nesterov: bool = True, ns_coefficients=JORDAN, ns_steps: int = 5, *,
                 skip_ns: bool = False, flatten_stacks: bool = False, scale_from_storage: bool = False) -> None:
        named = list(named_params)
        self._views = infer_views(model) if model is not None else {}
        self._names = {id(p): n for n, p in named}
        self.switches = dict(skip_ns=skip_ns, flatten_stacks=flatten_stacks, scale_from_storage=scale_from_storage)
        super().__init__([p for _, p in named], dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                                     nesterov=nesterov, ns_coefficients=tuple(ns_coefficients),
                                                     ns_steps=ns_steps, adjust_lr_fn=None))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            coeffs = tuple(g["ns_coefficients"])
            orth = make_orthogonalizer("ns", schedule=get_schedule("jordan") if coeffs == JORDAN
                                       else Schedule("custom", (coeffs,)), steps=g["ns_steps"])
            for p in g["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - g["momentum"])
                X = p.grad.lerp(buf, g["momentum"]) if g["nesterov"] else buf.clone()
                view = view_of(self._names[id(p)], p.shape, self._views)
                if self.switches["flatten_stacks"] and view in ("experts", "experts_t"):
                    view = "flatten"
                M = matrices(X, view)
                O = M if self.switches["skip_ns"] else orth(M)[0].to(p.dtype)
                rows, cols = (p.shape[0], p.shape[1]) if self.switches["scale_from_storage"] else M.shape[-2:]
                upd = torch.empty_like(p)
                matrices(upd, view).copy_(O * lr_ratio(None, int(rows), int(cols)))
                p.mul_(1 - g["lr"] * g["weight_decay"]).add_(upd, alpha=-g["lr"])
        return loss


def _split_torch(model):
    from muonscope.optim.routing import split_params

    mu, ad = split_params(model)
    return [p for _, p in mu], [p for _, p in ad], mu


def _with_adamw(model, muon_opt, adam):
    return [muon_opt, torch.optim.AdamW(adam, lr=1e-3)]


def setup(name: str, seed: int = 0):
    """(model, optimizer) of a named demo setup (see ``DEMOS``)."""
    from muonscope.errors import ConfigError
    from muonscope.optim.routing import MuonWithAdamW

    if name not in DEMOS:
        raise ConfigError(f"unknown demo {name!r}; demos: {', '.join(DEMOS)}")
    torch.manual_seed(seed)
    model = MixedLM() if name in ("muonscope-mixed", "flattened-experts", "stored-shape-scale") else TinyLM()
    mu, ad, named = _split_torch(model)
    if name == "torch-muon":
        return model, _with_adamw(model, torch.optim.Muon(mu, lr=0.02, weight_decay=0.1), ad)
    if name in ("muonscope", "muonscope-mixed"):
        return model, MuonWithAdamW(model, lr=0.02)
    if name == "all-adamw":
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)
    switch = {"momentum-sgd": "skip_ns", "flattened-experts": "flatten_stacks",
              "stored-shape-scale": "scale_from_storage"}[name]
    return model, _with_adamw(model, ReferenceMuon(named, model, weight_decay=0.05, **{switch: True}), ad)


DEMOS = {
    "torch-muon": "torch.optim.Muon on TinyLM's hidden matrices, AdamW for the rest (correct)",
    "muonscope": "muonscope MuonWithAdamW on TinyLM (correct)",
    "muonscope-mixed": "MuonWithAdamW on MixedLM: Conv1D, conv and expert stacks (correct)",
    "momentum-sgd": "a 'Muon' that runs no Newton-Schulz: momentum SGD under the Muon name",
    "all-adamw": "every matrix sent to AdamW (as when FSDP1 exposes 1-D shards to a p.ndim >= 2 split)",
    "flattened-experts": "expert stacks (E, out, in) orthogonalized as one flattened matrix",
    "stored-shape-scale": "lr scale from the stored shape[:2]: wrong for Conv1D (in, out) and conv kernels",
}
