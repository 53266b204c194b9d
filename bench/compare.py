"""Run one bench script in two commits, alternately, in one run, and print their outputs side by side.

    .venv/bin/python bench/compare.py BEFORE -- render.py --sizes 1000,10000 --no-reload

BEFORE is any git revision; it is checked out into a temporary worktree and removed afterwards. Each bench
script puts its own tree first on sys.path, so both run with this venv's libraries but their own companion.
Rounds alternate (before, after, before, ...) so that a noisy machine weighs on both sides alike.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(tree: Path, script: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, str(tree / "bench" / script[0]), *script[1:]], cwd=tree, capture_output=True, text=True
    )
    if done.returncode:
        return done.stdout + done.stderr + f"\n(exit {done.returncode})"
    return done.stdout


def side_by_side(left: str, right: str, width: int = 78) -> str:
    rows = itertools.zip_longest(left.splitlines(), right.splitlines(), fillvalue="")
    return "\n".join(f"{a[:width]:<{width}} | {b}" for a, b in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="git revision to compare with (e.g. main~5)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per side (2)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, script = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    if not script:
        parser.error("name a bench script and its arguments after --")
    with tempfile.TemporaryDirectory(prefix="bench-before-") as scratch:
        before = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before], check=True)
        try:
            for n in range(1, args.rounds + 1):
                old, new = run(before, script), run(ROOT, script)
                print(f"==== round {n}: {args.before} (left) | working tree (right) ====")
                print(side_by_side(old, new), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
