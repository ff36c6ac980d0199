"""Design probe for `auto`'s choice at 2+ labels per class. For every draw of the robustness
scenarios, on a VALIDATION part of each train split (never a test split): the semi head's and
logistic regression's accuracy, and which labeled rows each got right in auto's cross-validation
(`--repeats` times, with new folds). Then each decision rule is replayed on the same draws and
scored by its regret, how far it falls short of the better of the two heads per scenario and K.

    python benchmarks/auto_rule_probe.py [--model exports/mnist-sample-ddpm.onnx]
        [--scenarios standard,merged-2,...] [--repeats 1] [--records runs/auto-rule.jsonl]

Rules: `tie` (logreg only if it gets more held-out rows right; shipped until d04f2e7),
`mcnemar-z` (logreg only if its wins minus losses over the rows where the two differ exceed z
standard errors, z * sqrt(number of such rows)), `margin-m` (logreg only if ahead by more than m
in accuracy) and `alignment-low-high` (shipped at 0.4-0.7: the semi head if the labeled rows'
classes and the clusters found without labels align at least `high`, logreg below `low`, else `tie`).
"""

import argparse
import json
import math
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from heads_robustness import PER_CLASS, SCENARIOS, load_data
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from diffclass_cli.benchmark.protocol import draw_seed
from diffclass_cli.data.sources import UNLABELED
from diffclass_cli.features.extract import DEFAULT_MODEL
from diffclass_cli.heads.models import AutoHead, HeadKind, SpectralPseudoLabels, _class_codes, draw_per_class, fit_rows

DRAWS = {2: 20, 5: 10, 10: 10, 32: 5, 100: 5}


def record_draw(pool, test, per_class: int, seed: int, repeats: int) -> dict:
    """Held-out accuracy of both candidates and their cross-validation hits (summed over repeats)."""
    rows, y = fit_rows(pool.labels, draw_per_class(pool.labels, per_class, seed), HeadKind.auto)
    scaler = StandardScaler().fit(pool.features[rows])  # as in the auto head's Pipeline
    X, X_test = scaler.transform(pool.features[rows]), scaler.transform(test.features)
    auto, semi = AutoHead(random_state=seed), SpectralPseudoLabels(random_state=seed)
    _, targets = _class_codes(auto, X, y)
    _class_codes(semi, X, y)
    space = semi.cluster_space(X, len(auto.classes_))
    semi_hits, logreg_hits = 0, 0
    for repeat in range(repeats):
        hits = AutoHead(random_state=seed + repeat).cross_validate(X, targets, space, semi, min(auto.folds, per_class))
        semi_hits, logreg_hits = semi_hits + hits[0], logreg_hits + hits[1]
    labeled = targets != UNLABELED
    candidates = {"semi": clone(semi).fit_in_space(X, targets, space).classifier_,
                  "logreg": auto._logreg().fit(X[labeled], targets[labeled])}
    accuracy = {name: float((auto.classes_[model.predict(X_test)] == test.labels).mean())
                for name, model in candidates.items()}
    return {**accuracy, "cv_semi": np.asarray(semi_hits).tolist(), "cv_logreg": np.asarray(logreg_hits).tolist(),
            "alignment": auto.alignment(space, targets)}


def rules() -> dict:
    """Each rule: whether it picks logistic regression for a record (cross-validation hits as arrays)."""
    def mcnemar(z):
        def rule(r):
            semi, logreg = r["cv_semi"], r["cv_logreg"]
            return (logreg - semi).sum() > z * math.sqrt((logreg != semi).sum())
        return rule

    def margin(m):
        return lambda r: (r["cv_logreg"] - r["cv_semi"]).mean() > m

    def aligned(low, high):  # the shipped rule at (0.4, 0.7): alignment first, cross-validation in between
        return lambda r: r["alignment"] < low or (r["alignment"] < high and margin(0)(r))
    return {"tie": margin(0), **{f"mcnemar-{z}": mcnemar(z) for z in (0.5, 1, 1.5, 2)},
            **{f"margin-{m}": margin(m) for m in (0.02, 0.05)},
            **{f"alignment-{low}-{high}": aligned(low, high) for low, high in
               ((0.4, 0.7), (0.3, 0.7), (0.5, 0.7), (0.4, 0.6), (0.4, 0.8), (0, 0.7), (0.4, 1.01))}}


def replay(records: list[dict]) -> None:
    cells = defaultdict(list)
    for r in records:
        cells[(r["scenario"], r["per_class"])].append(r)
    print("| rule | cells within 0.02 of the better head | mean regret | largest regret (where) |\n|---|---|---|---|")
    for name, logreg_wins in rules().items():
        regret = {}
        for cell, draws in cells.items():
            best = max(np.mean([d["semi"] for d in draws]), np.mean([d["logreg"] for d in draws]))
            chosen = [d["logreg" if logreg_wins({**d, "cv_semi": np.array(d["cv_semi"]),
                                                  "cv_logreg": np.array(d["cv_logreg"])}) else "semi"] for d in draws]
            regret[cell] = best - np.mean(chosen)
        worst = max(regret, key=regret.get)
        values = np.array(list(regret.values()))
        print(f"| {name} | {(values <= 0.02).sum()} of {len(values)} | {values.mean():.4f} | "
              f"{regret[worst]:.3f} ({worst[0]}, K = {worst[1]}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--records", type=Path, help="JSON lines of the draws: written if absent, else replayed")
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    if args.records and args.records.exists():
        return replay([json.loads(line) for line in args.records.open()])
    records, data = [], {}
    for name in args.scenarios.split(","):
        dataset, build = SCENARIOS[name]
        if dataset not in data:
            data[dataset] = load_data(dataset, args.model, on_validation=True)
        pool, test = build(*data[dataset])
        smallest = np.bincount(pool.labels[pool.labels != UNLABELED]).min()
        for k in (k for k in PER_CLASS if 2 <= k <= smallest):
            for draw in range(DRAWS[k]):
                record = record_draw(pool, test, k, draw_seed(0, k, draw), args.repeats)
                records.append({"scenario": name, "per_class": k, "draw": draw, **record})
                print(name, k, draw, f"semi {record['semi']:.3f} logreg {record['logreg']:.3f}", flush=True)
    if args.records:
        args.records.write_text("".join(json.dumps(r) + "\n" for r in records))
    replay(records)


if __name__ == "__main__":
    main()
