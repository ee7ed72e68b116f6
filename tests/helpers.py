"""Shared test helpers."""

import torch


def matrix_with_spectrum(s, m, n, *, generator=None, dtype=torch.float64):
    """U diag(s) Vᵀ with Haar-random U (m×r), V (n×r), r = len(s) ≤ min(m, n)."""
    s = torch.as_tensor(s, dtype=torch.float64)
    r = s.numel()
    U, _ = torch.linalg.qr(torch.randn(m, r, dtype=torch.float64, generator=generator))
    V, _ = torch.linalg.qr(torch.randn(n, r, dtype=torch.float64, generator=generator))
    return ((U * s) @ V.T).to(dtype), U, V


def run_cli(*args) -> tuple[int, str, str]:
    """Run ``muonscope *args`` in-process through the CLI's error wrapper: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from muonscope.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()
