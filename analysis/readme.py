"""`make readme` / `python -m analysis.readme [--check]`: the README quotes study results only through
marked blocks,

    <!-- results: experiments/demo/results/methods.md -->
    (the file's text, put here by this tool)
    <!-- /results -->

and this tool refills every block from its file, so no number in the README is typed by hand.
`--check` changes nothing and exits 1 naming the blocks that differ from their files (a test runs it)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- results: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def refill(text: str) -> tuple[str, list[str]]:
    """The README text with every block refilled, and the blocks whose text changed."""
    changed: list[str] = []

    def replace(match: re.Match) -> str:
        path = ROOT / match["path"]
        if not path.is_file():
            raise SystemExit(f"error: README quotes {match['path']}, which does not exist (run its study, or `make results`)")
        body = path.read_text(encoding="utf-8")
        body = body if body.endswith("\n") else body + "\n"
        if body != match["body"]:
            changed.append(match["path"])
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a block differs from its file")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new, changed = refill(text)
    if args.check:
        for path in changed:
            print(f"README block for {path} differs from the file (run `make readme`)")
        return 1 if changed else 0
    README.write_text(new, encoding="utf-8")
    print(f"README: {len(BLOCK.findall(text))} result blocks, {len(changed)} refreshed" + (f": {', '.join(changed)}" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
