"""When a started bns-export process can take a signal: its own SIGTERM handler is installed (the tool's first
step, bns_export.interrupts.install_early), read from /proc, so kill tests wait for that mark, never a delay."""

from __future__ import annotations

import signal
import time
from pathlib import Path

CAN_TELL = Path("/proc/self/status").exists()


def ready(pid: int) -> bool:
    """The process has installed its own SIGTERM handler."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        caught = next(line for line in status if line.startswith("SigCgt"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def wait_ready(proc, timeout: float = 120.0) -> None:
    """Until `proc` (a Popen) can take a signal, has exited, or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while CAN_TELL and not ready(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
