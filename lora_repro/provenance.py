"""Where a run came from: the code version (commit, '-dirty' when tracked code differs from it), the
branch, and the device. Results a user reads count only runs whose code is on main and unmodified
(lora_repro.evidence.released)."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache

from . import PROJECT_ROOT

# Files a run or a study writes into the checkout: changing them does not change the code, so a
# study's own results and records never mark later runs '-dirty'.
NOT_CODE = (":(exclude,glob)experiments/*/results/**", ":(exclude,glob)experiments/*/records/**",
            ":(exclude,glob)experiments/*/runs.csv", ":(exclude,glob)experiments/*/recipes.json",
            ":(exclude)README.md")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str | None:
    """HEAD of the project checkout, with '-dirty' when tracked code has uncommitted changes (study
    results, records and the README's quoted blocks are not code)."""
    head = _git("rev-parse", "HEAD")
    if head is None:
        return None
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE)
    return head + ("-dirty" if dirty else "")


def git_branch() -> str | None:
    """The checked-out branch ('HEAD' when detached, e.g. a worktree at a fixed commit)."""
    return _git("rev-parse", "--abbrev-ref", "HEAD")


@lru_cache(maxsize=1)
def device() -> str:
    """The accelerator a run used (its name), else the CPU model, its core count and the threads
    torch used: on CPU the thread count changes both the speed and the order of floating-point sums,
    so two records agree bit for bit only at the same count."""
    threads = ""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
        count = torch.get_num_threads()
        threads = f", {count} torch thread{'s' if count != 1 else ''}"
    except ImportError:
        pass
    return f"cpu: {cpu_model()} ({cpu_count()} cores{threads})"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_count() -> int:
    """The cores this process may run on."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
