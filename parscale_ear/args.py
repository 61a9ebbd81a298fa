"""Command-line pieces shared by every parscale-ear command (the main CLI, its training commands, `fid` and
`fid-weights`): the one-line argument parser, the --steps and --set parsers, the device flag, the errors a user can
cause and how they print. Imports nothing heavy: `--help` answers without torch."""
from __future__ import annotations

import argparse
import json
import os
import sys

# Errors a user can cause (bad flags, files, folders): one line, exit 2. OSError covers missing,
# unwritable and wrong-kind paths (NotADirectoryError, IsADirectoryError, PermissionError) and a full disk.
USER_ERRORS = (ValueError, TypeError, OSError)
INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


def parse_steps(text: str):
    """--steps / --teacher-steps: N, or COARSE,FINE."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or COARSE,FINE (ints), got {text!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise argparse.ArgumentTypeError(f"--steps: expected N or COARSE,FINE, got {text!r}")


def parse_overrides(items: list[str] | None) -> dict:
    """--set key=value pairs (value parsed as JSON when it can be); dotted keys nest: vae.latent_channels=8."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def cpu_threads() -> int:
    """The CLI's CPU threads for torch: half the cores this process may use, at most 4 (small CPU work gains little
    from more, and on a machine shared with other jobs, threads that wait for busy cores run several times slower
    than one thread: the README has the measurements)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores // 2))


def set_cpu_threads() -> None:
    """Give torch `cpu_threads()` threads, unless OMP_NUM_THREADS says how many (then torch's own reading stands)."""
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return
    import torch

    torch.set_num_threads(cpu_threads())


def resolve_device(name: str | None) -> str:
    """--device as a device string (utils.resolve_device, imported only when a command runs: not for --help)."""
    from .utils import resolve_device as resolve

    return resolve(name)


class _Help(argparse.HelpFormatter):
    """Help with each optional flag's default shown (not for required flags, None or switches)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and not action.required and action.default not in (None, False, argparse.SUPPRESS)
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


class OneLineParser(argparse.ArgumentParser):
    """argparse with every usage error as one `parscale-ear: error:` line (exit 2), not a usage block; `--help`
    still prints the usage."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        command = self.prog.removeprefix("parscale-ear").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"parscale-ear: error: {where}{message} (see {self.prog} --help)\n")

    def parse_or_exit_code(self, argv) -> argparse.Namespace | int:
        """The parsed arguments, or the exit status argparse chose: 0 after --help / --version, 2 after a usage
        error (its one line already printed)."""
        try:
            return self.parse_args(argv)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 2


def one_line(error: BaseException) -> str:
    """An error's message on one line (its type's name where it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def print_error(error: BaseException | str) -> int:
    """Print `parscale-ear: error: MESSAGE` (one line) to stderr; returns the exit status 2."""
    print(f"parscale-ear: error: {error if isinstance(error, str) else one_line(error)}", file=sys.stderr)
    return 2


def print_interrupted(detail: str = "") -> int:
    """Print one line for Ctrl-C and return 130 (what a shell reports for a command stopped by SIGINT)."""
    print(f"parscale-ear: interrupted{': ' + detail if detail else ''}", file=sys.stderr)
    return INTERRUPTED
