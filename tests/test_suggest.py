"""Choosing what to label (`diffclass suggest`) and flagging labels that look wrong (`fit`)."""

import csv
import io
import json
import re

import numpy as np
import pytest

from diffclass_cli.benchmark.features import FeatureSet
from diffclass_cli.benchmark.protocol import Protocol, Split, run_protocol
from diffclass_cli.choices import LabelChoice
from diffclass_cli.heads.models import HeadKind
from diffclass_cli.heads.store import load_head
from diffclass_cli.heads.suggest import suggest_rows, suspicious_labels
from tests.conftest import assert_one_line_error, write_feature_file, write_image

SIZES = (120, 90, 60, 40)  # four groups of similar images, of unequal size


def blobs(seed: int = 0, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Features `[N, 16]` of four well-separated groups, and the group of each row."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (len(SIZES), 16))
    groups = np.repeat(np.arange(len(SIZES)), SIZES)
    return centres[groups] + rng.normal(0, spread, (len(groups), 16)), groups


def test_one_typical_image_of_each_group_largest_group_first():
    features, groups = blobs()
    chosen, left = suggest_rows(features, 4, seed=0)
    assert left == []
    assert [groups[s.row] for s in chosen] == [0, 1, 2, 3]  # every group once, by size
    assert [s.rank for s in chosen] == [1, 2, 3, 4]
    assert np.abs(np.array([s.cluster_size for s in chosen]) - SIZES).max() <= 2  # the clusters are the groups
    for s in chosen:  # typical: nearer its group's centre than most of the group
        members = features[groups == groups[s.row]]
        distances = np.linalg.norm(members - members.mean(axis=0), axis=1)
        assert np.linalg.norm(features[s.row] - members.mean(axis=0)) <= np.median(distances)
    again, _ = suggest_rows(features, 4, seed=0)
    assert [s.row for s in again] == [s.row for s in chosen]


def test_the_next_batch_goes_to_groups_no_label_covers():
    features, groups = blobs()
    labeled = np.zeros(len(groups), bool)
    labeled[[0, 130]] = True  # groups 0 and 1 have a label each
    chosen, _ = suggest_rows(features, 2, labeled, seed=0)
    assert sorted(groups[s.row] for s in chosen) == [2, 3]
    assert not labeled[[s.row for s in chosen]].any()


def test_a_budget_below_the_classes_names_the_groups_it_leaves_out():
    features, groups = blobs()
    chosen, left = suggest_rows(features, 2, seed=0, classes=4)
    assert [groups[s.row] for s in chosen] == [0, 1]  # the two largest groups, not two halves of the pool
    assert [groups[s.row] for s in left] == [2, 3] and [s.rank for s in left] == [3, 4]
    labeled = np.isin(np.arange(len(groups)), [s.row for s in chosen])
    assert [groups[s.row] for s in suggest_rows(features, 2, labeled, seed=0, classes=4)[0]] == [2, 3]


def test_flipped_labels_are_flagged_and_clean_ones_are_not():
    features, groups = blobs()
    targets = np.full(len(groups), -1)
    rng = np.random.default_rng(0)
    labeled = np.concatenate([rng.choice(np.flatnonzero(groups == g), 5, replace=False) for g in range(4)])
    targets[labeled] = groups[labeled]
    flipped = labeled[[0, 7]]
    targets[flipped] = (groups[flipped] + 1) % 4
    found = suspicious_labels(features, targets)
    assert {f["row"] for f in found} == set(flipped.tolist())
    assert {f["row"]: f["looks_like"] for f in found} == {int(r): int(groups[r]) for r in flipped}


@pytest.fixture
def pool_file(tmp_path):
    features, groups = blobs()
    paths = [f"img{i:03d}.png" for i in range(len(groups))]
    return write_feature_file(tmp_path / "pool.h5", features, [-1] * len(groups), paths, []), groups


def test_suggest_lists_what_to_label_and_fit_reads_it_back_filled_in(cli, pool_file, tmp_path):
    pool, groups = pool_file
    result = cli("suggest", pool, "--budget", 4)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"] and all(r["label"] == "" and r["why"] for r in rows)
    for r in rows:  # the user fills in the labels
        r["label"] = f"kind{groups[int(r['path'][3:6])]}"
    filled = tmp_path / "filled.csv"
    with open(filled, "w", newline="") as f:
        writer = csv.DictWriter(f, rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)
    fitted = cli("fit", pool, "--labels", filled, "--out", tmp_path / "h.skops", "--head", "semi")
    assert fitted.exit_code == 0, fitted.output
    _, info = load_head(tmp_path / "h.skops")
    assert info["class_names"] == ["kind0", "kind1", "kind2", "kind3"] and info["fitted_on"]["labeled_rows"] == 4

    jsonl = cli("suggest", pool, "--budget", 2, "--format", "jsonl", "--out", "-")
    assert [json.loads(line)["rank"] for line in jsonl.stdout.splitlines()] == [1, 2]
    assert "no label" not in jsonl.stderr


def test_suggest_names_the_clusters_a_small_budget_leaves_out(cli, pool_file):
    pool, groups = pool_file
    result = cli("suggest", pool, "--budget", 2, "--classes", 4)
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 2
    warning = next(line for line in result.stderr.splitlines() if "get no label" in line)
    named = [int(name[3:6]) for name in re.findall(r"img\d{3}\.png", warning)]
    assert "2 cluster(s)" in warning and sorted(groups[named]) == [2, 3]


def test_without_classes_suggest_names_no_uncovered_cluster(cli, tmp_path):
    features, groups = blobs()
    labels = np.full(len(groups), -1)
    labels[[0, 1]] = 0  # two labeled rows in one group: one cluster of the four is left over
    paths = [f"img{i:03d}.png" for i in range(len(groups))]
    pool = write_feature_file(tmp_path / "pool.h5", features, labels, paths, ["a"])
    result = cli("suggest", pool, "--budget", 2)
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 2 and "get no label" not in result.stderr


def test_fit_says_which_labels_look_wrong_and_strict_labels_refuses_them(cli, tmp_path):
    features, groups = blobs(spread=0.5)
    labels = np.full(len(groups), -1)
    for g in range(4):
        labels[np.flatnonzero(groups == g)[:4]] = g
    labels[0] = 2  # an image of group 0, labeled as group 2
    paths = [f"img{i:03d}.png" for i in range(len(groups))]
    names = ["a", "b", "c", "d"]
    data = write_feature_file(tmp_path / "f.h5", features, labels, paths, names)
    result = cli("fit", data, "--out", tmp_path / "h.skops")
    assert result.exit_code == 0, result.output
    assert "label check: img000.png is labeled 'c' but sits with 'a'" in result.stderr
    _, info = load_head(tmp_path / "h.skops")
    assert [(f["path"], f["given"], f["looks_like"]) for f in info["suspicious_labels"]] == [("img000.png", "c", "a")]
    shown = json.loads(cli("info", tmp_path / "h.skops", "--json").stdout)
    assert shown["suspicious_labels"][0]["path"] == "img000.png"
    assert_one_line_error(cli("fit", data, "--out", tmp_path / "s.skops", "--strict-labels"), "look like another class")


def one_label_per_group(labels: LabelChoice, draws: int) -> tuple[list[dict], dict, np.ndarray]:
    """The benchmark protocol on the blobs (even rows to label from, odd rows to score), logreg at
    one label per group: its result rows, its labeled rows per draw, and the groups of the pool."""
    features, groups = blobs()
    half = np.arange(len(groups)) % 2 == 0
    feature_set = FeatureSet("blobs", features[half], features[~half])
    protocol = Protocol(per_class=(1,), draws_few_labels=draws, heads=(HeadKind.logreg,), cnn_steps=0,
                        labels=labels)
    rows, labeled = run_protocol([feature_set], Split(None, groups[half]), Split(None, groups[~half]),
                                 protocol=protocol)
    return rows, labeled, groups[half]


def test_the_benchmark_can_label_what_suggest_picks():
    rows, draws, _ = one_label_per_group(LabelChoice.suggest, 3)
    assert len(rows) == 3 and all(r["accuracy"] == 1.0 for r in rows)  # one image of each group, named
    assert set(draws) == {"blobs/1/0", "blobs/1/1", "blobs/1/2"} and all(len(d) == 4 for d in draws.values())


def test_copy_to_lays_the_suggested_images_out_for_labeling(cli, tiny_onnx, tmp_path):
    folder = tmp_path / "unlabeled"
    for i in range(8):
        write_image(folder / ("sub" if i % 2 else "") / f"u{i}.png", mode="L", seed=i)
    assert cli("featurize", folder, tmp_path / "t.h5", "--model", tiny_onnx).exit_code == 0
    result = cli("suggest", tmp_path / "t.h5", "--budget", 2, "--copy-to", tmp_path / "to-label",
                 "--out", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    listed = [row["path"] for row in csv.DictReader(open(tmp_path / "s.csv"))]
    copied = sorted(p.name for p in (tmp_path / "to-label").iterdir())
    assert copied == sorted(p.rsplit("/", 1)[-1] for p in listed)
    for name in listed:
        assert (tmp_path / "to-label" / name.rsplit("/", 1)[-1]).read_bytes() == (folder / name).read_bytes()


def test_the_benchmark_can_label_images_drawn_from_the_whole_pool():
    rows, draws, pool_groups = one_label_per_group(LabelChoice.pool, 5)
    assert all(len(rows_of_draw) == 4 for rows_of_draw in draws.values())  # the same budget: K x classes
    covered = [len(np.unique(pool_groups[rows_of_draw])) for rows_of_draw in draws.values()]
    assert min(covered) < 4  # not one per class: some draw misses a group
    assert all(r["accuracy"] == 1.0 for r, n in zip(rows, covered) if n == 4)
    assert all(r["accuracy"] < 1.0 for r, n in zip(rows, covered) if n < 4)
