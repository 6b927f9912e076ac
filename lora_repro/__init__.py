"""lora-repro: reproduce LoRA (Hu et al. 2021) and LoRA+ (Hayou et al. 2024) with one trainer."""

from pathlib import Path

__version__ = "0.1.0"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
