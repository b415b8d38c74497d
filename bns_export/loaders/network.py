"""What every network loader shares: running a user's code in one-line errors, and the forward-call check."""

from __future__ import annotations

import contextlib

import torch

from ..errors import BNSError
from ..fields import NetworkField
from ..fields.field import NULL_LABEL


@contextlib.contextmanager
def users_code(what: str):
    """Run a user's code: any exception, a syntax error or sys.exit() inside it is one line, not a traceback."""
    try:
        yield
    except SystemExit as e:
        raise BNSError(f"{what} called sys.exit({e.code!r})") from None
    except Exception as e:  # includes SyntaxError and ImportError raised while importing
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise BNSError(f"{what} failed: {type(e).__name__}: {first}") from None


def check_network(field: NetworkField) -> None:
    """Forward calls on a batch of 2 at the interval's ends and middle: the output must have the
    sample's shape and be finite (a model returning NaN is named here, with the time, once)."""
    x = torch.zeros((2, *field.sample_shape), dtype=field.default_dtype)
    condition = None
    if field.num_classes is not None:
        condition = torch.tensor([0, NULL_LABEL])  # a class and the null class
    elif field.cond_shape is not None:
        condition = torch.stack([field.cond_set[0], field.null_cond]).to(field.default_dtype)
    for t in (field.t_lo, 0.5 * (field.t_lo + field.t_hi), field.t_hi):
        with users_code(f"model {field.name} on input of shape {tuple(x.shape)} at t={t:.4g}"), torch.no_grad():
            out = field(x, torch.tensor(t), condition)
        if tuple(out.shape) != tuple(x.shape):
            raise BNSError(f"model {field.name} returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        if not torch.isfinite(out).all():
            raise BNSError(f"model {field.name} returns NaN or inf at t={t:.4g} (our time: 0 noise, 1 data)")
