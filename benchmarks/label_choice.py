"""Labels chosen by `diffclass suggest` against labels drawn at random, side by side: reads the
results.csv of runs of the same scenarios (benchmarks/heads_robustness.py or `diffclass
benchmark`, one with `--labels random`, one with `--labels suggest`, and with `--pool` one with
`--labels pool`) and writes a markdown table of mean (worst draw) per scenario, head and budget,
with suggest's difference to each.

    python benchmarks/label_choice.py RANDOM/results.csv SUGGEST/results.csv [--pool POOL/results.csv] \
        --out docs/label-choice.md
"""

import argparse
import csv
from pathlib import Path

import numpy as np


def read(path: Path) -> dict[tuple[str, str, int], list[float]]:
    cells: dict[tuple[str, str, int], list[float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            key = (row["sweep"] if row["sweep"] != "main" else row["feature_set"], row["head"], int(row["per_class"]))
            cells.setdefault(key, []).append(float(row["accuracy"]))
    return cells


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ({np.min(values):.3f})"


def table(suggest: dict, baselines: dict[str, dict]) -> tuple[list[str], dict[str, list[float]]]:
    """One row per cell all runs share; `baselines`: name -> cells, each compared with suggest."""
    names = list(baselines)
    lines = ["| scenario | head | labels per class | " + " | ".join(f"{n}: mean (worst)" for n in names)
             + " | suggest: mean (worst) | " + " | ".join(f"suggest - {n}" for n in names) + " |",
             "|---|---|---|" + "---|" * (2 * len(names) + 1)]
    differences = {n: [] for n in names}
    shared = set(suggest).intersection(*baselines.values())
    for key in sorted(shared):
        s = np.mean(suggest[key])
        for n in names:
            differences[n].append(s - np.mean(baselines[n][key]))
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cell(baselines[n][key]) for n in names)
                     + f" | {cell(suggest[key])} | " + " | ".join(f"{differences[n][-1]:+.3f}" for n in names) + " |")
    return lines, differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("random", type=Path, help="results of --labels random (K per class)")
    parser.add_argument("suggest", type=Path)
    parser.add_argument("--pool", type=Path, help="results of --labels pool (K x classes from the whole pool)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    baselines = {"random per class": read(args.random)}
    if args.pool:
        baselines["random from the pool"] = read(args.pool)
    lines, differences = table(read(args.suggest), baselines)
    lines.append("")
    for name, values in differences.items():
        d = np.array(values)
        lines.append(f"Against {name}, {len(d)} cells: suggest higher in {(d > 0).sum()}, lower in {(d < 0).sum()}, "
                     f"more than 0.01 lower in {(d < -0.01).sum()}; mean difference {d.mean():+.4f}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
