"""How the commands after featurize scale with the feature file: wall time and peak RSS of
merge, fit (logreg, semi, auto; 10 labels per class), predict and evaluate on files of 10 k,
100 k and 1 M rows; featurize end to end on 10 k and 100 k image files; and what storing
features as float16 changes in accuracy; and how the auto head's accuracy depends on how many
unlabeled rows it may cluster (`--max-unlabeled`).

The big files hold real features of the shipped extractor (mnist-sample:train and :test, 5000
images), tiled with small noise (0.1 of each feature's spread), written as two shards that
`merge` joins. Every command runs in a fresh process, one at a time; RSS is the process's peak.

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--images 10000,100000]
                               [--work /tmp/scale] [--only rows,featurize,float16,pool]
"""

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from diffclass_cli.choices import HeadKind
from diffclass_cli.data.sources import open_source
from diffclass_cli.features.h5 import FeatureWriter, read_features

BASE = ("mnist-sample:train", "mnist-sample:test")
WRITE_ROWS = 8192


# Runs a command and writes its peak RSS (KB) to a file. A child's ru_maxrss starts at the RSS of the
# process it was forked from, so the command is forked from this small interpreter, not from the benchmark.
PEAK_RSS = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, status, usage = os.wait4(p.pid, 0); "
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); sys.exit(os.waitstatus_to_exitcode(status))")


def run(args: list, cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of `diffclass -q ARGS` in a fresh process."""
    command = [sys.executable, "-m", "diffclass_cli", "-q", *map(str, args)]
    with open(cwd / "commands.log", "a") as log:
        log.write(f"$ diffclass {' '.join(map(str, args))}\n")
        log.flush()
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, cwd / "peak_rss", *command], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=log)
        seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"diffclass {' '.join(map(str, args))} failed; see {cwd / 'commands.log'}")
    return seconds, int((cwd / "peak_rss").read_text()) / 1024


def base_files(work: Path, dtype: str = "float32") -> list[Path]:
    """mnist-sample's two splits featurized with the shipped extractor."""
    paths = []
    for spec in BASE:
        path = work / f"{spec.split(':')[1]}-{dtype}.h5"
        if not path.exists():
            run(["featurize", spec, path, "--dtype", dtype], work)
        paths.append(path)
    return paths


def tiled_parts(work: Path, rows: int, parts: int = 2) -> list[Path]:
    """Shard files that `merge` joins into a file of `rows` rows of tiled real features."""
    files = [read_features(path) for path in base_files(work)]
    features = np.concatenate([f.features for f in files])
    labels = np.concatenate([f.labels for f in files])
    paths = [p for f in files for p in f.paths]
    spread = 0.1 * features.std(axis=0)
    source = f"tiled:{rows}"
    attrs = {**files[0].attrs, "source": source, "source_images": rows,
             "source_fingerprint": hashlib.sha256(source.encode()).hexdigest()}
    rng = np.random.default_rng(0)
    out = []
    for part in range(parts):
        path = work / f"tiled-{rows}-part{part}.h5"
        begin, end = part * rows // parts, (part + 1) * rows // parts
        attrs["shard"] = f"{part}/{parts}"
        writer = FeatureWriter(path, features.shape[1], attrs, files[0].class_names)
        for start in range(begin, end, WRITE_ROWS):
            index = np.arange(start, min(end, start + WRITE_ROWS))
            base = index % len(features)
            noise = rng.standard_normal((len(index), features.shape[1]), dtype=np.float32) * spread
            writer.append(features[base] + noise, labels[base], [f"t{i // len(features)}/{paths[b]}"
                                                                 for i, b in zip(index, base)], [], len(index))
        writer.close()
        out.append(path)
    return out


def rows_table(work: Path, sizes: list[int]) -> None:
    heads = [HeadKind.logreg, HeadKind.semi, HeadKind.auto]
    columns = ["merge", *(f"fit {h.value}" for h in heads), "predict", "evaluate"]
    print("\n| rows | file | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 2), flush=True)
    for rows in sizes:
        parts = tiled_parts(work, rows)
        whole = work / f"tiled-{rows}.h5"
        cells = [run(["merge", whole, *parts, "--overwrite"], work)]
        for part in parts:
            part.unlink()
        for head in heads:
            cells.append(run(["fit", whole, "--out", work / f"{head.value}.skops", "--head", head.value,
                              "--per-class", 10, "--overwrite"], work))
        logreg = work / "logreg.skops"
        cells.append(run(["predict", whole, "--head", logreg, "--out", work / "p.csv", "--overwrite"], work))
        cells.append(run(["evaluate", whole, "--head", logreg], work))
        size = whole.stat().st_size / 2**30
        print(f"| {rows:,} | {size:.2f} GB | " + " | ".join(f"{s:.1f} s, {mb:.0f} MB" for s, mb in cells) + " |",
              flush=True)
        whole.unlink()


def featurize_table(work: Path, counts: list[int]) -> None:
    """`featurize` of a folder of `count` PNG files (mnist-sample's 5000 images, hard-linked
    under new names as often as needed)."""
    originals = work / "png"
    if not originals.exists():
        for spec in BASE:
            source = open_source(spec)
            for i in range(len(source)):
                path = originals / source.class_names[source.labels[i]] / f"{spec.split(':')[1]}{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                source.load(i).save(path)
    images = sorted(originals.rglob("*.png"))
    print("\n| image files | wall time | images/s | peak RSS |\n|---|---|---|---|", flush=True)
    for count in counts:
        folder = work / f"images-{count}"
        if not folder.exists():
            for i in range(count):
                original = images[i % len(images)]
                link = folder / original.parent.name / f"c{i // len(images)}-{original.name}"
                link.parent.mkdir(parents=True, exist_ok=True)
                os.link(original, link)
        seconds, mb = run(["featurize", folder, work / f"images-{count}.h5", "--overwrite"], work)
        print(f"| {count:,} | {seconds:.0f} s | {count / seconds:.0f} | {mb:.0f} MB |", flush=True)


def float16_table(work: Path, draws_few: int, draws: int) -> None:
    """Accuracy on mnist-sample:test with features stored as float32 and as float16, same draws."""
    from diffclass_cli.benchmark.features import FeatureSet
    from diffclass_cli.benchmark.protocol import Protocol, Split, run_protocol
    from diffclass_cli.benchmark.report import cell_stats

    sets, splits = [], None
    for dtype in ("float32", "float16"):
        train, test = (read_features(p) for p in base_files(work, dtype))
        sets.append(FeatureSet(dtype, train.features, test.features))
        splits = Split(np.empty(0), train.labels), Split(np.empty(0), test.labels)
    protocol = Protocol(per_class=(1, 10, 100), draws=draws, draws_few_labels=draws_few,
                        heads=(HeadKind.logreg, HeadKind.auto), cnn_steps=0)
    rows, _ = run_protocol(sets, *splits, protocol, sweep="float16", cnn=False)
    stats = cell_stats(rows)
    print(f"\nmean accuracy on mnist-sample:test (worst draw), {draws_few} draws at K = 1, {draws} at K = 10 and 100"
          "\n\n| head | stored as | K = 1 | K = 10 | K = 100 |\n|---|---|---|---|---|")
    by_head = sorted(stats.items(), key=lambda item: (item[0][2], item[0][1] != "float32"))
    for (_sweep, feature_set, head), by_k in by_head:
        cells = [f"{by_k[k][0]:.3f} ({by_k[k][2]:.3f})" for k in protocol.per_class]
        print(f"| {head} | {feature_set} | " + " | ".join(cells) + " |")
    file_sizes = [sum(p.stat().st_size for p in base_files(work, d)) / 2**20 for d in ("float32", "float16")]
    print(f"\nfile size, both splits: float32 {file_sizes[0]:.1f} MB, float16 {file_sizes[1]:.1f} MB", flush=True)


def pool_table(work: Path, caps: list[int], draws_few: int, draws: int) -> None:
    """Accuracy of the auto head on mnist-sample:test when it may cluster only a sample of the
    4000-row pool's unlabeled rows: how much the size of the unlabeled sample matters."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from diffclass_cli.benchmark.protocol import draw_seed
    from diffclass_cli.heads.models import draw_per_class, fit_rows, make_head

    train, test = (read_features(p) for p in base_files(work))
    print(f"\nauto head, mean accuracy on mnist-sample:test (worst draw), {draws_few} draws at K = 1, {draws} at K = 10"
          "\n\n| --max-unlabeled | K = 1 | K = 10 |\n|---|---|---|", flush=True)
    for cap in caps:
        cells = []
        for k, n_draws in ((1, draws_few), (10, draws)):
            accuracies = []
            for draw in range(n_draws):
                seed = draw_seed(0, k, draw)
                rows, targets = fit_rows(train.labels, draw_per_class(train.labels, k, seed), HeadKind.auto, cap, seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    head = make_head(HeadKind.auto, seed=seed).fit(train.features[rows], targets)
                accuracies.append(float((head.predict(test.features) == test.labels).mean()))
            cells.append(f"{np.mean(accuracies):.3f} ({min(accuracies):.3f})")
        print(f"| {cap:,}{' (all)' if cap >= len(train.labels) else ''} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--images", default="10000,100000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/diffclass-scale"))
    parser.add_argument("--only", default="rows,featurize,float16,pool")
    parser.add_argument("--caps", default="1000,2000,4000")
    parser.add_argument("--draws-few", type=int, default=20)
    parser.add_argument("--draws", type=int, default=5)
    options = parser.parse_args()
    options.work.mkdir(parents=True, exist_ok=True)
    only = options.only.split(",")
    print(f"{os.cpu_count()} cores; work folder {options.work} (commands in commands.log)")
    if "rows" in only:
        rows_table(options.work, [int(n) for n in options.sizes.split(",")])
    if "featurize" in only:
        featurize_table(options.work, [int(n) for n in options.images.split(",")])
    if "float16" in only:
        float16_table(options.work, options.draws_few, options.draws)
    if "pool" in only:
        pool_table(options.work, [int(n) for n in options.caps.split(",")], options.draws_few, options.draws)


if __name__ == "__main__":
    main()
