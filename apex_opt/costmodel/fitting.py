"""Small numerical helpers (numpy only): Levenberg-Marquardt least squares and log-log interpolation."""

from __future__ import annotations

from typing import Callable

import numpy as np


def least_squares(residual: Callable[[np.ndarray], np.ndarray], x0, iters: int = 200) -> np.ndarray:
    """Minimise ``sum(residual(x)**2)`` by damped Gauss-Newton (Levenberg-Marquardt) with a
    forward-difference Jacobian. Deterministic; meant for a handful of parameters."""
    x = np.asarray(x0, dtype=float).copy()
    r = residual(x)
    cost = float(r @ r)
    lam = 1e-2
    for _ in range(iters):
        jac = np.empty((r.size, x.size))
        for j in range(x.size):
            h = 1e-6 * max(1.0, abs(x[j]))
            xp = x.copy()
            xp[j] += h
            jac[:, j] = (residual(xp) - r) / h
        a = jac.T @ jac
        g = jac.T @ r
        improved = False
        while lam < 1e10:
            step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-12), -g)
            xn = x + step
            with np.errstate(all="ignore"):
                rn = residual(xn)
            cn = float(rn @ rn)
            if np.isfinite(cn) and cn < cost:
                improved = cost - cn > 1e-12 * cost
                x, r, cost = xn, rn, cn
                lam = max(lam / 3.0, 1e-9)
                break
            lam *= 4.0
        if not improved:
            break
    return x


def interp_log(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Piecewise-linear interpolation of ``ys`` in ``log(x)``; clamps outside the range."""
    return float(np.interp(np.log(x), np.log(xs), ys))
