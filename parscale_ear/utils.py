"""Devices and the run environment: the one device check of the API, the CLI, ci/ and the FID command, and the
machine/commit description stored beside measured numbers."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess

import torch


def check_device(device, name: str = "device") -> torch.device:
    """`device` as a torch.device: a torch.device or 'cpu', 'cuda', 'cuda:N' that this machine has (one-line errors).
    The one device check of the API, the CLI, the ci/ scripts and the FID command."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name}: expected 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r} ({type(device).__name__})")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name}: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {str(device)!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu" or device.index not in (None, 0):
        raise ValueError(f"{name}: expected 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}")
    return device


def available_memory() -> int:
    """Bytes of memory free for a new allocation now (Linux: MemAvailable; elsewhere the free pages, or no limit
    where the OS does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 62


def resolve_device(name: str | None) -> str:
    """A device string from --device (checked by `check_device`); without one, cuda where available, else cpu."""
    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(check_device(name, "--device"))


def environment(device: torch.device) -> dict:
    """Device name, torch version, git commit and date for a results file."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    commit = commit or os.environ.get("PARSCALE_EAR_COMMIT", "")  # copies of the tree without .git
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": name, "device_type": device.type, "torch": torch.__version__, "git_commit": commit or "unknown",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
