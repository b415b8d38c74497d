"""One exception type for problems a user can cause; the CLI maps it to one line and an exit code."""

from __future__ import annotations

EXIT_PARITY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MISSING_BACKEND = 3
EXIT_INTERNAL = 4  # an unexpected exception: reported in one line (BNS_EXPORT_DEBUG=1 shows the traceback)


class BNSError(ValueError):
    """A user-facing error: a one-line message and the process exit code the CLI should use.

    A ValueError, so code written against diffusers' schedulers and pipelines (which raise ValueError for
    bad arguments) catches ours too."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code
