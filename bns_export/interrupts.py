"""Signals that end a command: SIGINT, SIGTERM and SIGHUP, from the command's first instruction.

Before a command starts (while the CLI imports), a signal exits at once with 128 + signal: nothing
has been written yet.  While it runs, a signal raises `Interrupted` (a KeyboardInterrupt, so every
`finally` removes its temporary files) and is remembered: code that swallows the exception (an
import interrupted half-way, a library's broad `except`) cannot turn it into success, because
publishing steps call `raise_if_interrupted()` and the CLI exits with 128 + signal whatever the
command returned.  Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_pending: list[int] = []
_finished: list[bool] = []


class Interrupted(KeyboardInterrupt):
    """A signal raised like Ctrl-C so every `finally` cleans up (staging folders, temp files)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def pending() -> int | None:
    """The first signal received while a command ran, or None."""
    return _pending[0] if _pending else None


def raise_if_interrupted() -> None:
    """Before publishing anything: a signal received earlier (even one somebody swallowed) stops here."""
    if _pending:
        raise Interrupted(_pending[0])


def mark_finished() -> None:
    """The command completed and published its output: a signal after this point changes nothing."""
    _finished.append(True)


def _exit_now(signum, frame) -> None:
    if _finished:  # the command is over (its output complete): a late signal must not report failure
        return
    os.write(2, f"interrupted ({signal.Signals(signum).name})\n".encode())
    os._exit(128 + signum)


def ignore_late_signals() -> None:
    """The console entry's last step: ignore signals while the interpreter shuts down (Python would reset
    its handlers to the default, killing a finished command)."""
    if _finished:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def _raise(signum, frame) -> None:
    if _finished:
        return
    if not _pending:
        _pending.append(signum)
    raise Interrupted(signum)


def install_early() -> None:
    """The console entry's first step: until a command starts, a signal ends the process at once."""
    for sig in SIGNALS:
        signal.signal(sig, _exit_now)


@contextlib.contextmanager
def signals_as_interrupts():
    """While a command runs, SIGINT, SIGTERM (timeout, docker, systemd, Kubernetes) and SIGHUP raise
    `Interrupted` and are remembered (see `pending`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pending.clear()  # a new command (several run in one process under tests or the Python API)
    _finished.clear()
    old = {sig: signal.signal(sig, _raise) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT/SIGTERM/SIGHUP for a few system calls that must not be separated (two renames);
    a signal that arrives meanwhile is handed to its handler right after.  Python runs signal handlers
    in the main thread only, so elsewhere nothing can interrupt the block and nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, frame: got.append(signum)) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if got:
            handler = old[got[0]]
            if callable(handler):
                handler(got[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), got[0])
