"""What a person watching a terminal sees."""

from __future__ import annotations

import os
import sys


def show_progress() -> bool:
    """Progress bars (training steps with ETA and loss, decoding MRs/s) only for a person watching:
    stderr is a terminal and CI is not set. LORA_REPRO_PROGRESS=1 or 0 forces them on or off."""
    forced = os.environ.get("LORA_REPRO_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty() and not os.environ.get("CI")
