"""Does the label-free choice (`export --timestep auto --taps auto`) ever lose to the defaults?

For one backbone checkpoint and its domain's train / test splits, on the test split (logreg,
5 draws per K, 20 at K = 1): the default export, the label-free choice, and the best timestep
by labels on a validation part of the train split (an upper reference no user without labels
has), next to raw pixels. Every step is a `diffclass` command, as a user would run it.

    python benchmarks/label_free_table.py runs/textured.ckpt --train runs/domains/textured/train \\
        --test runs/domains/textured/test --out runs/label-free/textured
"""

import argparse
import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from diffclass_cli.extractors.spec import DEFAULT_TIMESTEPS

CANDIDATES = "10,25,50,100,250,500"
GRID = ["--heads", "logreg", "--draws", "5", "--draws-few", "20"]


def diffclass(*args) -> None:
    subprocess.run([sys.executable, "-m", "diffclass_cli", *map(str, args)], check=True)


def mean_accuracy(results: Path, sweep: str) -> dict[str, dict[int, float]]:
    """feature set (or sweep variant) -> K -> mean accuracy over the draws."""
    found = defaultdict(lambda: defaultdict(list))
    with open(results, newline="") as stream:
        for row in csv.DictReader(stream):
            if row["sweep"] == sweep:
                found[row["feature_set"]][int(row["per_class"])].append(float(row["accuracy"]))
    return {name: {k: sum(v) / len(v) for k, v in by_k.items()} for name, by_k in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--validation-per-class", default="1,10,100",
                        help="labels per class on the validation part (e.g. 1,10,50 where classes are smaller)")
    options = parser.parse_args()
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = options.checkpoint
    if not (out / "default.onnx").exists():
        diffclass("export", ckpt, "--out", out / "default.onnx")
    if not (out / "auto.onnx").exists():
        diffclass("export", ckpt, "--out", out / "auto.onnx", "--timestep", "auto", "--taps", "auto",
                  "--choose-on", options.train)
    if not (out / "validation" / "results.csv").exists():
        diffclass("benchmark", ckpt, "--out", out / "validation", "--train", options.train, "--on-validation",
                  "--sweep-timestep", CANDIDATES, "--baselines", "", "--per-class", options.validation_per_class, *GRID)
    by_t = mean_accuracy(out / "validation" / "results.csv", "timestep")
    best = max(by_t, key=lambda t: sum(by_t[t].values()))
    if not (out / "best.onnx").exists():
        diffclass("export", ckpt, "--out", out / "best.onnx", "--timestep", best.removeprefix("t"))
    if not (out / "test" / "results.csv").exists():
        diffclass("benchmark", out / "default.onnx", out / "auto.onnx", out / "best.onnx", "--out", out / "test",
                  "--train", options.train, "--test", options.test, "--baselines", "pixels", "--per-class", "1,10,100",
                  *GRID)
    test = mean_accuracy(out / "test" / "results.csv", "main")
    auto = json.loads(subprocess.run([sys.executable, "-m", "diffclass_cli", "info", out / "auto.onnx", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    chose = f"t = {auto['timesteps'][0]}, taps {'+'.join(auto['taps'])}"
    print(f"validation logreg by timestep (K = {options.validation_per_class}): "
          + "; ".join(f"{t} " + " / ".join(f"{a:.3f}" for a in by_t[t].values()) for t in by_t))
    print(f"label-free scores: timestep {auto['timestep_choice']['scores']}; taps {auto['taps_choice']['scores']}")
    print(f"| K | default (t = {DEFAULT_TIMESTEPS[0]}) | auto ({chose}) | best by labels ({best}) | raw pixels |")
    print("|---|---|---|---|---|")
    for k in (1, 10, 100):
        cells = [test[f"diffusion:{name}"][k] for name in ("default", "auto", "best")] + [test["pixels"][k]]
        print(f"| {k} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
