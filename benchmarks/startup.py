"""Start-up and short-command wall time, before and after the torch-free inference path,
measured side by side in one run (runs alternate, so both see the same machine load):

  diffclass --version
  diffclass predict test.h5 --head head.skops      (1000 rows of mnist-sample:test)

"before" is the package as of --baseline (a git revision, unpacked with `git archive`), "now"
is this checkout; both run with this Python and its installed packages.

    python benchmarks/startup.py [--baseline 0a7c87d] [--repeats 7]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wall_time(tree: Path, args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffclass_cli", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="0a7c87d", help="git revision of 'before'")
    parser.add_argument("--repeats", type=int, default=7)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        before = work / "before"
        before.mkdir()
        archive = subprocess.run(["git", "archive", options.baseline, "diffclass_cli", "exports"], cwd=REPO,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", before], input=archive, check=True)
        for args in (["-q", "featurize", "mnist-sample:test", "test.h5"],
                     ["-q", "fit", "test.h5", "--out", "head.skops", "--head", "logreg", "--per-class", "10"]):
            subprocess.run([sys.executable, "-m", "diffclass_cli", *args], cwd=work, check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        commands = {"diffclass --version": ["--version"],
                    "diffclass predict (1000 rows)": ["predict", "test.h5", "--head", "head.skops"]}
        trees = {"before": before, "now": REPO}
        print(f"median of {options.repeats} runs, seconds (before = {options.baseline}, now = this checkout)\n")
        print("| command | before | now | now / before |\n|---|---|---|---|")
        for name, args in commands.items():
            times = {label: [] for label in trees}
            for _ in range(options.repeats):
                for label, tree in trees.items():
                    times[label].append(wall_time(tree, args, work))
            a, b = (statistics.median(times[label]) for label in trees)
            print(f"| `{name}` | {a:.2f} | {b:.2f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
