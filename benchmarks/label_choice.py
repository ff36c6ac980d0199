"""Labels chosen by `diffclass suggest` against labels drawn at random, side by side: reads the
results.csv of two runs of the same scenarios (benchmarks/heads_robustness.py or `diffclass
benchmark`, one with `--labels random`, one with `--labels suggest`) and writes a markdown table of
mean (worst draw) per scenario, head and budget, with the difference.

    python benchmarks/label_choice.py RANDOM/results.csv SUGGEST/results.csv --out docs/label-choice.md
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


def table(random: dict, suggest: dict) -> tuple[list[str], list[float]]:
    lines = ["| scenario | head | labels per class | random: mean (worst) | suggest: mean (worst) | difference |",
             "|---|---|---|---|---|---|"]
    differences = []
    for key in sorted(set(random) & set(suggest), key=lambda k: (k[0], k[1], k[2])):
        r, s = np.array(random[key]), np.array(suggest[key])
        differences.append(s.mean() - r.mean())
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {r.mean():.3f} ({r.min():.3f}) | {s.mean():.3f} "
                     f"({s.min():.3f}) | {s.mean() - r.mean():+.3f} |")
    return lines, differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("random", type=Path)
    parser.add_argument("suggest", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines, differences = table(read(args.random), read(args.suggest))
    d = np.array(differences)
    lines += ["", f"{len(d)} cells: suggest higher in {(d > 0).sum()}, lower in {(d < 0).sum()}, "
              f"more than 0.01 lower in {(d < -0.01).sum()}; mean difference {d.mean():+.4f}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
