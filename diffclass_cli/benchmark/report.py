"""Benchmark outputs: results.csv (one row per fit), summary.md (mean ± std), PNG plots."""

import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffclass_cli.extractors.spec import TIMESTEP_PREFIX, timesteps_name  # noqa: E402

COLUMNS = ["sweep", "feature_set", "head", "per_class", "draw", "seed", "accuracy"]


def write_results(rows: list[dict], path: Path) -> None:
    with ResultsFile(path) as results:
        for row in rows:
            results.write(row)


class ResultsFile:
    """results.csv written a row at a time, each on disk as soon as it is finished."""

    def __init__(self, path: Path):
        self.stream = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.stream, COLUMNS, lineterminator="\n")
        self.writer.writeheader()

    def write(self, row: dict) -> None:
        self.writer.writerow({**row, "accuracy": f"{row['accuracy']:.4f}"})
        self.stream.flush()

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()


def cell_stats(rows: list[dict]) -> dict[tuple[str, str, str], dict[int, tuple[float, float, float]]]:
    """(sweep, feature set, head) -> {K: (mean, std, worst over draws)}, in first-seen order."""
    cells: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        cells[(row["sweep"], row["feature_set"], row["head"])][row["per_class"]].append(row["accuracy"])
    return {key: {k: (float(np.mean(v)), float(np.std(v)), float(np.min(v))) for k, v in by_k.items()}
            for key, by_k in cells.items()}


def summary_markdown(rows: list[dict], preamble: str = "", scored_on: str | None = None) -> str:
    """One table per sweep; `scored_on` names the held-out rows (default: the main grid's split)."""
    stats = cell_stats(rows)
    lines = [preamble] if preamble else []
    for sweep in dict.fromkeys(key[0] for key in stats):
        keys = [key for key in stats if key[0] == sweep]
        ks = sorted({k for key in keys for k in stats[key]})
        held_out = scored_on or ("the main grid's held-out split" if sweep == "main"
                                 else "the validation part of the train split")
        lines += [f"## {sweep}", "", f"Accuracy on {held_out}, mean ± std over draws (worst draw), by labels per "
                  "class.", "",
                  "| feature set | head | " + " | ".join(str(k) for k in ks) + " |",
                  "|---|---|" + "---|" * len(ks)]
        for key in keys:
            cells = [f"{stats[key][k][0]:.3f} ± {stats[key][k][1]:.3f} ({stats[key][k][2]:.3f})" if k in stats[key]
                     else "" for k in ks]
            lines.append(f"| {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(rows: list[dict], sweep: str, path: Path, title: str) -> None:
    """Accuracy vs labels per class (log x), one line per feature set and head (a colour per
    feature set, a line style per head), ±std bands."""
    stats = {key: v for key, v in cell_stats(rows).items() if key[0] == sweep}
    colors = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(key[1] for key in stats))}
    styles = {head: ("-", "--", ":", "-.")[i % 4] for i, head in enumerate(dict.fromkeys(key[2] for key in stats))}
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for (_, feature_set, head), by_k in stats.items():
        ks = sorted(by_k)
        mean = np.array([by_k[k][0] for k in ks])
        std = np.array([by_k[k][1] for k in ks])
        ax.plot(ks, mean, marker="o", color=colors[feature_set], linestyle=styles[head],
                label=f"{feature_set} + {head}")
        ax.fill_between(ks, mean - std, mean + std, color=colors[feature_set], alpha=0.12)
    ax.set_xscale("log")
    ax.set_xticks(sorted({k for by_k in stats.values() for k in by_k}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set(xlabel="labeled images per class", ylabel="test accuracy", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_timesteps(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy vs diffusion timestep, one line per labels-per-class, ±std bands."""
    stats = {key: v for key, v in cell_stats(rows).items()
             if key[0] == "timestep" and key[1].removeprefix(TIMESTEP_PREFIX).isdigit()}  # single steps only
    timesteps = sorted(int(key[1].removeprefix(TIMESTEP_PREFIX)) for key in stats)
    head = next(iter(stats))[2]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for k in sorted({k for by_k in stats.values() for k in by_k}):
        mean = np.array([stats[("timestep", timesteps_name((t,)), head)][k][0] for t in timesteps])
        std = np.array([stats[("timestep", timesteps_name((t,)), head)][k][1] for t in timesteps])
        line, = ax.plot(timesteps, mean, marker="o", label=f"{k} per class")
        ax.fill_between(timesteps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set(xlabel="diffusion timestep t (of 1000)", ylabel="test accuracy", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(title=f"{head} head", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
