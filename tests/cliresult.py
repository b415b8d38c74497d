"""The CLI as tests call it, and the one check of how a failure must look to a user."""

from __future__ import annotations

from click.testing import CliRunner

from bns_export.cli import main


def run(*args) -> tuple[int, str, str]:
    """`bns-export ARGS...` in-process: (exit code, stdout, stderr)."""
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def one_line_error(code: int, out: str, err: str, needle: str | None = None, expected_code: int = 2) -> str:
    """A refusal as users must see it: the documented exit code, exactly one `error:` line (naming `needle`), no
    traceback; returns that line."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == expected_code, (code, out, err)
    assert len(lines) == 1 and "Traceback" not in out + err, err
    if needle:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
