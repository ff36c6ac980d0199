"""Start-up and short-command wall time, measured side by side in one run (the commands take
turns, so all see the same machine load), median of --repeats runs each:

  python -c "import typer, numpy"                          (the floor of any Typer CLI)
  diffclass --version
  diffclass predict test.h5 --head head.skops               (1000 rows of mnist-sample:test)
  diffclass predict test.h5 --head classifier.onnx          (the same head, export-classifier'd)

    python benchmarks/startup.py [--repeats 7]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall_time(command: list[str], cwd: Path) -> float:
    began = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    options = parser.parse_args()
    diffclass = [sys.executable, "-m", "diffclass_cli"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for args in (["-q", "featurize", "mnist-sample:test", "test.h5"],
                     ["-q", "fit", "test.h5", "--out", "head.skops", "--head", "logreg", "--per-class", "10"],
                     ["-q", "export-classifier", "head.skops", "--out", "classifier.onnx"]):
            subprocess.run([*diffclass, *args], cwd=work, check=True)
        commands = {"python -c 'import typer, numpy'": [sys.executable, "-c", "import typer, numpy"],
                    "diffclass --version": [*diffclass, "--version"],
                    "diffclass predict (1000 rows, head.skops)": [*diffclass, "predict", "test.h5", "--head",
                                                                  "head.skops"],
                    "diffclass predict (1000 rows, classifier.onnx)": [*diffclass, "predict", "test.h5", "--head",
                                                                       "classifier.onnx"]}
        times = {name: [] for name in commands}
        for _ in range(options.repeats):
            for name, command in commands.items():
                times[name].append(wall_time(command, work))
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(f"median of {options.repeats} runs, taken in turn\n")
        print("| command | seconds |\n|---|---|")
        for name, seconds in medians.items():
            print(f"| `{name}` | {seconds:.2f} |")
        names = list(medians)
        print(f"\n--version / bare import: {medians[names[1]] / medians[names[0]]:.2f}x; "
              f"predict classifier.onnx / head.skops: {medians[names[3]] / medians[names[2]]:.2f}")


if __name__ == "__main__":
    main()
