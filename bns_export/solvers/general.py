"""The general NS form x_{i+1} = sum_k c_ik x_k + sum_k d_ik u_k, and its conversion to (t, a, b).

Classic solvers are written here in the general form (it reads like their textbook updates)
and converted by the recursion of method.md section 2 (Prop. 3.1): with x_k = A_k x_0 + B_k . U,
a_i = sum_k c_ik A_k and b_i = d_i + sum_k c_ik B_k.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .table import NSSolver


class GeneralForm:
    """Builder for an n-step general-form solver: state k sits at time times[k] (k = 0..n)."""

    def __init__(self, times: list[float] | np.ndarray) -> None:
        self.times = np.asarray(times, dtype=np.float64)  # n + 1 entries: eval times, then t_end
        n = len(self.times) - 1
        self.c = np.zeros((n, n))
        self.d = np.zeros((n, n))

    @property
    def n(self) -> int:
        return self.c.shape[0]

    def step(self, i: int, c: dict[int, float] | None = None, d: dict[int, float] | None = None) -> None:
        """Define update i: x_{i+1} = sum c[k] x_k + sum d[k] u_k (k <= i)."""
        for k, v in (c or {}).items():
            assert k <= i
            self.c[i, k] += v
        for k, v in (d or {}).items():
            assert k <= i
            self.d[i, k] += v

    def to_ns(self, name: str, **meta) -> NSSolver:
        """Convert to the compact (t, a, b) table."""
        n = self.n
        big_a = np.zeros(n + 1)
        big_b = np.zeros((n + 1, n))
        big_a[0] = 1.0
        for i in range(n):
            big_a[i + 1] = self.c[i, : i + 1] @ big_a[: i + 1]
            big_b[i + 1] = self.d[i] + self.c[i, : i + 1] @ big_b[: i + 1]
        return NSSolver(self.times[:n], big_a[1:], big_b[1:], self.times[n], name=name, meta=meta)


def scale_time(
    base: Callable[[np.ndarray], GeneralForm],
    r_grid: np.ndarray,
    t_of_r: Callable[[np.ndarray], np.ndarray],
    s_of_r: Callable[[np.ndarray], np.ndarray],
    dt_dr: Callable[[np.ndarray], np.ndarray],
    ds_dr: Callable[[np.ndarray], np.ndarray],
) -> GeneralForm:
    """Run `base` on the scale-time transformed field and express it on the original field.

    xbar(r) = s_r x(t_r) has velocity ubar = (s'/s) xbar + s t' u(x, t_r), which is linear in
    (x, u): so a base update xbar_{i+1} = sum c xbar_k + sum d ubar_k becomes
    s_{i+1} x_{i+1} = sum (c_ik s_k + d_ik s'_k) x_k + sum d_ik s_k t'_k u_k, again general form.
    """
    g = base(r_grid)
    r = g.times
    s, sp, tp = s_of_r(r), ds_dr(r), dt_dr(r)
    out = GeneralForm(t_of_r(r))
    for i in range(g.n):
        ks = range(i + 1)
        out.step(
            i,
            c={k: (g.c[i, k] * s[k] + g.d[i, k] * sp[k]) / s[i + 1] for k in ks},
            d={k: g.d[i, k] * s[k] * tp[k] / s[i + 1] for k in ks},
        )
    return out
