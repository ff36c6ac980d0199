"""How long the default head takes to fit, and whether a change to it changes what it chooses:
the `auto` head of this checkout against the one of another revision (`--against`), fitted on
the same rows side by side in one run, on the robustness scenarios (validation parts only) and
on a user's album of 338 rows.

    python benchmarks/fit_speed.py --against 4515b96 [--scenarios standard,pixels,...] [--draws 3]

Prints one line per fit pair (scenario, K, draw: choice and time of each, accuracy of each on
the held-out part) and the totals: how often the choices differ and the time ratio.
"""

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from diffclass_cli.choices import HeadKind
from diffclass_cli.data.sources import UNLABELED
from diffclass_cli.features.extract import DEFAULT_MODEL
from diffclass_cli.heads.models import AutoHead, draw_per_class, fit_rows

sys.path.insert(0, str(Path(__file__).parent))
from heads_robustness import SCENARIOS, load_data  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def models_of(revision: str):
    """diffclass_cli/heads/models.py as it was at `revision`, imported as a module of its own."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:diffclass_cli/heads/models.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"models_{revision}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_fit(auto_class, X, targets, seed):
    head = Pipeline([("scale", StandardScaler()), ("auto", auto_class(random_state=seed))])
    began = time.perf_counter()
    head.fit(X, targets)
    return head, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="the git revision whose auto head to compare with")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--per-class", default="1,2,5,10,32")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--album", type=Path, help="also a feature file of a user's album (its own labels)")
    args = parser.parse_args()
    other = models_of(args.against).AutoHead
    cases = []  # (name, X, targets, test X, test labels, seed)
    if args.album:
        from diffclass_cli.features.h5 import open_feature_file

        with open_feature_file(args.album) as reader:
            table = reader.take(np.arange(reader.rows))
        cases.append(("album", table.features, table.labels, None, None, 0))
    data = {}
    for name in args.scenarios.split(","):
        dataset, build = SCENARIOS[name]
        if dataset not in data:
            data[dataset] = load_data(dataset, DEFAULT_MODEL, on_validation=True)
        pool, test = build(*data[dataset])
        smallest = np.bincount(pool.labels[pool.labels != UNLABELED]).min()
        for k in (int(k) for k in args.per_class.split(",") if int(k) <= smallest):
            for draw in range(args.draws):
                seed = 1000 * k + draw
                labeled = draw_per_class(pool.labels, k, seed)
                rows, targets = fit_rows(pool.labels, labeled, HeadKind.auto)
                cases.append((f"{name} K={k} draw {draw}", pool.features[rows], targets, test.features,
                              test.labels, seed))
    differ, times = 0, np.zeros(2)
    for name, X, targets, test_x, test_y, seed in cases:
        results = []
        for auto_class in (AutoHead, other):
            head, seconds = timed_fit(auto_class, X, targets, seed)
            accuracy = float((head.predict(test_x) == test_y).mean()) if test_x is not None else float("nan")
            results.append((head.steps[-1][1].choice_.value, seconds, accuracy))
        differ += results[0][0] != results[1][0]
        times += [results[0][1], results[1][1]]
        print(f"{name}: this {results[0][0]} {results[0][1]:.2f}s acc {results[0][2]:.3f} | {args.against} "
              f"{results[1][0]} {results[1][1]:.2f}s acc {results[1][2]:.3f}", flush=True)
    print(f"{len(cases)} fits: choices differ in {differ}; total {times[0]:.1f}s against {times[1]:.1f}s "
          f"({times[1] / times[0]:.1f}x)")


if __name__ == "__main__":
    main()
