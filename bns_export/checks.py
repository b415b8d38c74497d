"""The one validation layer for what users hand us: numbers, integers and JSON files.

Every check raises BNSError with one line naming the value and what was expected (exit code 2).
Standard library only: the torch-free runtime uses it too.  The CLI's number options are click
types built on the same functions, so a flag and a JSON field are judged alike.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import click

from .errors import BNSError

#: solver files, manifests and other JSON we read are small; a bigger one is refused unread
MAX_JSON_BYTES = 4 << 20


def number(value, name: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    """A finite real number (not a bool or string) within [lo, hi] ((lo, hi] with lo_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BNSError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:
        raise BNSError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise BNSError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise BNSError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
    if hi is not None and v > hi:
        raise BNSError(f"{name} must be <= {hi:g}, got {value!r}")
    return v


def integer(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number (an int, or a float with no fraction such as 8.0) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BNSError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise BNSError(f"{name} must be a whole number, got {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise BNSError(
            f"{name} must be in {lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}, got {v}"
        )
    return v


def read_json(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES):
    """Parse a small JSON file: missing, a folder, too big, not UTF-8, not JSON or nested too deep is one line."""
    p = Path(path)
    if p.is_dir():
        raise BNSError(f"{what} {p} is a directory, not a file")
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise BNSError(f"{what} not found: {p}") from None
    except OSError as e:
        raise BNSError(f"cannot read {what} {p}: {e.strerror}") from None
    if size > max_bytes:
        raise BNSError(f"{what} {p} is {size} bytes, more than the {max_bytes} a {what} may have")
    try:
        return json.loads(p.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BNSError(f"{p}: not a valid JSON {what} ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise BNSError(f"{p}: not a valid JSON {what} (nested too deeply)") from None
    except OSError as e:
        raise BNSError(f"cannot read {what} {p}: {e.strerror}") from None


def _no_constant(name: str):
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


class Number(click.ParamType):
    """A click option checked by `number`: finite and in range."""

    name = "number"

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> None:
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            raw = value
        else:
            try:
                raw = float(value)
            except (TypeError, ValueError):
                self.fail(f"{_flag(param)} must be a number, got {value!r}", param, ctx)
        try:
            return number(
                raw, f"--{param.name.replace('_', '-')}" if param else "value", self.lo, self.hi, self.lo_open
            )
        except BNSError as e:
            self.fail(str(e), param, ctx)


class Integer(click.ParamType):
    """A click option checked by `integer`."""

    name = "integer"

    def __init__(self, lo: int | None = None, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            raw = value
        else:
            try:
                raw = int(str(value).strip(), 10)
            except ValueError:
                self.fail(f"{_flag(param)} must be a whole number, got {value!r}", param, ctx)
        try:
            return integer(raw, _flag(param), self.lo, self.hi)
        except BNSError as e:
            self.fail(str(e), param, ctx)


def _flag(param) -> str:
    return param.opts[0] if param is not None and param.opts else "value"
