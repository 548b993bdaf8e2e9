"""Ridge least squares in float64: the refit that reconstruction and StructPrune share.

Given the Gram matrix H^T H of the inputs and H^T Y against the targets, the weight W (out, in)
minimising ||H W^T (+ 1 b^T) - Y||^2 + lambda ||W||^2, with lambda = ridge x the mean of
diag(H^T H) (the bias, if fitted, is not penalised).
"""

from __future__ import annotations

import torch


def solve_ridge(hh: torch.Tensor, hy: torch.Tensor, ridge: float,
                intercept: tuple[torch.Tensor, torch.Tensor, int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W as float32, b as float32 or None). ``hh`` (k, k) = H^T H and ``hy`` (k, out) =
    H^T Y in float64; ``intercept`` = (H^T 1, Y^T 1, rows) to fit a bias b as well."""
    k = hh.shape[0]
    lam = ridge * float(hh.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(k, dtype=hh.dtype, device=hh.device)
    if intercept is None:
        return torch.linalg.solve(hh + lam * eye, hy).T.float(), None
    x_sum, y_sum, rows = intercept
    a = torch.zeros(k + 1, k + 1, dtype=hh.dtype, device=hh.device)
    b = torch.zeros(k + 1, hy.shape[1], dtype=hh.dtype, device=hh.device)
    a[:k, :k], b[:k] = hh + lam * eye, hy
    a[:k, k] = a[k, :k] = x_sum
    a[k, k], b[k] = float(rows), y_sum
    sol = torch.linalg.solve(a, b)
    return sol[:k].T.float(), sol[k].float()


class Gram:
    """Accumulates H^T H and H^T Y in float64 over batches of (H, Y) rows."""

    def __init__(self) -> None:
        self.hh: torch.Tensor | None = None
        self.hy: torch.Tensor | None = None

    def add(self, h: torch.Tensor, y: torch.Tensor) -> None:
        h = h.reshape(-1, h.shape[-1]).double()
        y = y.reshape(-1, y.shape[-1]).double()
        hh, hy = h.T @ h, h.T @ y
        self.hh = hh if self.hh is None else self.hh + hh
        self.hy = hy if self.hy is None else self.hy + hy

    def solve(self, ridge: float) -> torch.Tensor:
        """W (out, in) minimising ||H W^T - Y||^2 + lambda ||W||^2."""
        if self.hh is None or self.hy is None:
            raise ValueError("no rows were added to this Gram matrix")
        return solve_ridge(self.hh, self.hy, ridge)[0]
