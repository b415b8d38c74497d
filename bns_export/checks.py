"""The one validation layer for what users hand us: numbers, integers and JSON files.

Every check raises BNSError with one line naming the value and what was expected (exit code 2).
Standard library only: the torch-free runtime uses it too.  The CLI's number options are click
types built on the same functions, so a flag and a JSON field are judged alike.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path

import click

from .errors import BNSError

#: solver files, manifests and other JSON we read are small; a bigger one is refused unread
MAX_JSON_BYTES = 4 << 20
#: the classifier-free guidance scales accepted anywhere (flags, solver files, manifests, the API)
GUIDANCE_RANGE = (0.0, 100.0)


def guidance_scale(value, name: str = "guidance") -> float:
    """A guidance scale w in GUIDANCE_RANGE (1 = none)."""
    return number(value, name, *GUIDANCE_RANGE)


#: knots of `LO:HI` when no count is given: one every this many units of guidance (2:8 -> 2, 3, ..., 8).  Measured
#: (docs/benchmarks.md, "Guidance families"): on digits-text 1 apart at NFE 8 and 2 apart at NFE 4, the family's
#: table at every midpoint is within 0.06 dB of a table distilled there, or above it; 2 apart was not measured at
#: NFE 8 on digits-text, where the tables change fastest with guidance, so the default stays 1
KNOT_SPACING = 1.0


def guidance_knots(text: str, name: str = "--guidance") -> tuple[float, ...]:
    """A guidance family's knots from `LO:HI` (evenly spaced, about KNOT_SPACING apart), `LO:HI:K` (K knots)
    or a list `W1,W2,...`; increasing scales in GUIDANCE_RANGE, two to 64 of them."""
    ranged = ":" in text
    try:
        values = [float(v) for v in text.split(":" if ranged else ",")]
    except ValueError:
        values = []
    if not values or (ranged and len(values) not in (2, 3)):
        raise BNSError(f"bad {name} {text!r}: give one scale (3), a range LO:HI[:K] (2:8) or a list (2,3,5,8)")
    values = [guidance_scale(v, name) if i < 2 or not ranged else v for i, v in enumerate(values)]
    if ranged:
        lo, hi = values[:2]
        if not lo < hi:
            raise BNSError(f"bad {name} {text!r}: the range LO:HI needs LO < HI")
        count = values[2] if len(values) == 3 else math.ceil((hi - lo) / KNOT_SPACING - 1e-9) + 1
        count = integer(int(count) if float(count).is_integer() else count, f"{name} knot count", 2, 64)
        values = [lo + (hi - lo) * i / (count - 1) for i in range(count)]
    if len(values) < 2 or any(b <= a for a, b in zip(values, values[1:])):
        raise BNSError(f"bad {name} {text!r}: a family needs two or more increasing scales")
    if len(values) > 64:
        raise BNSError(f"bad {name} {text!r}: {len(values)} knots, more than 64")
    return tuple(values)


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


#: names written into manifests and Triton configs: letters, digits, _ . - (nothing to escape, no injection)
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


#: the most numbers one sample may hold (a 1024x1024 RGB image holds 3M, video latents tens of millions): a larger
#: shape is refused before anything is allocated
MAX_SAMPLE_NUMEL = 1 << 28


def sample_shape(shape, name: str = "--shape") -> tuple[int, ...]:
    """One sample's shape: 1 to 8 positive whole sizes holding at most MAX_SAMPLE_NUMEL numbers."""
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 8:
        raise BNSError(f"bad {name} {shape!r}: expected 1 to 8 sizes such as 1,28,28")
    sizes = tuple(integer(s, name, 1, MAX_SAMPLE_NUMEL) for s in shape)
    if math.prod(sizes) > MAX_SAMPLE_NUMEL:
        raise BNSError(
            f"bad {name} {','.join(map(str, sizes))}: {math.prod(sizes):,} numbers per sample, more than "
            f"{MAX_SAMPLE_NUMEL:,}"
        )
    return sizes


def env_flag(name: str) -> bool:
    """A yes/no setting from the environment (unset, empty, 0, false, no: off; 1, true, yes: on)."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise BNSError(f"environment variable {name}={value[:40]!r} must be 1 (on) or 0 (off)")


def plain_identifier(name, what: str) -> str:
    """A tensor or model name: letters, digits, '_', '.', '-' (at most 128, not starting with . or -)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BNSError(
            f"{what} {name!r} must be letters, digits, '_', '.' or '-' (at most 128, not starting with . or -)"
        )
    return name


def read_json(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES, constants: bool = False):
    """Parse a small JSON file: missing, not a regular file (a folder, FIFO or device), too big, not UTF-8,
    not JSON or nested too deeply is one line naming the position.  constants=True accepts the
    NaN / Infinity / -Infinity literals that diffusers writes into scheduler configs."""
    data = read_small_file(path, what, max_bytes)
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=None if constants else _no_constant)
    except _Constant as e:
        pos = text.find(e.name)
        line, col = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        raise BNSError(
            f"{path}: not a valid JSON {what} ({e.name} is not a JSON number: line {line} column {col})"
        ) from None
    except UnicodeDecodeError as e:
        raise BNSError(f"{path}: not a valid JSON {what} (not UTF-8 at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BNSError(f"{path}: not a valid JSON {what} ({e.msg}: line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise BNSError(f"{path}: not a valid JSON {what} (nested too deeply)") from None


def read_small_file(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes, read without blocking on a FIFO and never more
    than max_bytes + 1 (a device such as /dev/zero is refused before it is read)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise BNSError(f"{what} not found: {p}") from None
    except IsADirectoryError:
        raise BNSError(f"{what} {p} is a directory, not a file") from None
    except OSError as e:
        raise BNSError(f"cannot read {what} {p}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise BNSError(f"{what} {p} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise BNSError(f"{what} {p} is not a regular file (a FIFO, socket or device); refusing to read it")
        if st.st_size > max_bytes:
            raise BNSError(f"{what} {p} is {st.st_size} bytes, more than the {max_bytes} a {what} may have")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # it grew while we read it
            raise BNSError(f"{what} {p} is more than the {max_bytes} bytes a {what} may have")
        return b"".join(chunks)
    except OSError as e:
        raise BNSError(f"cannot read {what} {p}: {e.strerror}") from None
    finally:
        os.close(fd)


class _Constant(ValueError):
    """NaN, Infinity or -Infinity where strict JSON has no such number."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_constant(name: str):
    raise _Constant(name)


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


class GuidanceFamily(click.ParamType):
    """distill's -w: one scale (a table) or a family's knots (`LO:HI[:K]`, `W1,W2,...`; see guidance_knots)."""

    name = "guidance"

    def convert(self, value, param, ctx):
        if isinstance(value, (float, tuple)):
            return value
        text = str(value).strip()
        try:
            if ":" in text or "," in text:
                return guidance_knots(text, _flag(param))
            try:
                raw = float(text)
            except ValueError:
                raw = text
            return guidance_scale(raw, _flag(param))
        except BNSError as e:
            self.fail(str(e), param, ctx)


def _flag(param) -> str:
    return param.opts[0] if param is not None and param.opts else "value"
