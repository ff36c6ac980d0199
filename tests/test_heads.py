import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from diffclass_cli.features.h5 import read_features
from diffclass_cli.heads import models
from diffclass_cli.heads.apply import evaluate, predict
from diffclass_cli.heads.fit import fit_head
from diffclass_cli.heads.models import AutoHead, HeadKind, SpaceCache, SpectralPseudoLabels, draw_per_class, fit_rows
from diffclass_cli.heads.store import FORMAT, load_head, sio
from tests.conftest import assert_one_line_error, write_feature_file


@parametrize_with_checks([SpectralPseudoLabels(), AutoHead()], expected_failed_checks=lambda est: {
    "check_classifiers_classes": "-1 means unlabeled, as in scikit-learn's LabelSpreading"})
def test_semi_head_is_a_scikit_learn_estimator(estimator, check):
    check(estimator)


@pytest.mark.parametrize("kind", list(HeadKind))
def test_each_head_fits_and_predicts_real_digits(kind, digit_files, tmp_path):
    fit_head(digit_files["train"], tmp_path / "h.skops", kind, per_class=10, seed=0)
    report = evaluate(digit_files["test"], tmp_path / "h.skops")
    assert report["rows"] == 359 and report["accuracy"] > 0.75


def test_semi_uses_the_unlabeled_rows(mnist_pixel_files, tmp_path):
    scores = {HeadKind.logreg: [], HeadKind.semi: []}
    for seed in range(3):  # the same labeled draws for both heads
        for kind in scores:
            info = fit_head(mnist_pixel_files["train"], tmp_path / f"{kind.value}{seed}.skops", kind, per_class=1,
                            seed=seed)
            scores[kind].append(evaluate(mnist_pixel_files["test"], tmp_path / f"{kind.value}{seed}.skops")["accuracy"])
    assert info["fitted_on"]["labeled_rows"] == 10 and info["fitted_on"]["unlabeled_rows"] == 3990
    assert np.mean(scores[HeadKind.semi]) > np.mean(scores[HeadKind.logreg]) + 0.05, scores


def test_self_training_corrects_pseudo_labels(digit_files):
    # Raw 8x8 pixels cluster imperfectly; the classifier fitted on the pseudo-labels, in all the
    # features, relabels some of what the clusters got wrong.
    train, test = read_features(digit_files["train"]), read_features(digit_files["test"])
    scores, memory = {0: [], 3: []}, SpaceCache()  # the same rows each time: one clustering space
    for seed in range(5):
        rows, targets = fit_rows(train.labels, draw_per_class(train.labels, 3, seed), HeadKind.semi)
        for rounds in scores:
            head = Pipeline([("scale", StandardScaler()),
                             ("semi", SpectralPseudoLabels(self_training_rounds=rounds, memory=memory))])
            head.fit(train.features[rows], targets)
            scores[rounds].append((head.predict(test.features) == test.labels).mean())
    assert np.mean(scores[3]) > np.mean(scores[0]) + 0.005, scores


def test_the_clustering_space_is_cached_only_where_asked(digit_files, monkeypatch):
    X = StandardScaler().fit_transform(read_features(digit_files["train"]).features)
    calls, embedding = [], models.embedding
    monkeypatch.setattr(models, "embedding", lambda *args: calls.append(args[1:]) or embedding(*args))
    SpectralPseudoLabels().cluster_space(X, 10)
    SpectralPseudoLabels().cluster_space(X, 10)
    assert len(calls) == 2  # no state outside a head: each computes its own
    memory = SpaceCache()
    head = SpectralPseudoLabels(memory=memory)
    space = head.cluster_space(X, 10)
    copy = clone(head)  # as AutoHead's folds and scikit-learn's tools copy a head
    assert copy.memory is memory and copy.cluster_space(X, 10) is space
    assert calls[2:] == [(10, 32, 15)] and head.cluster_space(X, 9) is not space
    np.testing.assert_array_equal(space, embedding(X, 10, 32, 15))


def test_per_class_draws_exactly_k_reproducibly():
    labels = np.repeat(np.arange(3), 20)
    labels[::7] = -1
    first = draw_per_class(labels, 4, seed=1)
    assert np.bincount(labels[first]).tolist() == [4, 4, 4] and (labels[first] != -1).all()
    assert np.array_equal(first, draw_per_class(labels, 4, seed=1))
    assert not np.array_equal(first, draw_per_class(labels, 4, seed=2))


def test_head_round_trip_in_a_fresh_process(digit_files, tmp_path):
    head_path = tmp_path / "h.skops"
    fit_head(digit_files["train"], head_path, HeadKind.mlp, per_class=5)
    here = np.concatenate([p.proba for p in predict(digit_files["test"], head_path)[1]])
    script = ("import sys, numpy as np; from diffclass_cli.heads.apply import predict; "
              "np.save(sys.argv[3], np.concatenate([p.proba for p in predict(sys.argv[1], sys.argv[2])[1]]))")
    subprocess.run([sys.executable, "-c", script, str(digit_files["test"]), str(head_path),
                    str(tmp_path / "p.npy")], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), here)
    head, info = load_head(head_path)
    assert info["class_names"] == [str(d) for d in range(10)] and info["feature_dim"] == 64
    assert info["extractor_sha256"] == "raw-pixels" and head.predict(np.zeros((1, 64))).shape == (1,)


def test_csv_on_stdout_and_proba_columns(cli, digit_files, tmp_path):
    assert cli("fit", digit_files["train"], "--out", tmp_path / "h.skops").exit_code == 0
    result = cli("predict", digit_files["test"], "--head", tmp_path / "h.skops", "--proba")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["path", "label", "confidence"] + [f"p_{d}" for d in range(10)]
    assert len(rows) == 360 and rows[1][0].startswith("digits:")
    probs = np.array([[float(v) for v in row[3:]] for row in rows[1:]])
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert all(float(row[2]) == max(map(float, row[3:])) for row in rows[1:])
    to_file = cli("predict", digit_files["test"], "--head", tmp_path / "h.skops", "--out", tmp_path / "p.csv")
    assert to_file.exit_code == 0 and to_file.stdout == ""
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "path,label,confidence"


def test_evaluate_matches_scikit_learn(cli, digit_files, tmp_path):
    fit_head(digit_files["train"], tmp_path / "h.skops", per_class=3)
    result = cli("evaluate", digit_files["test"], "--head", tmp_path / "h.skops", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    ff, (head, info) = read_features(digit_files["test"]), load_head(tmp_path / "h.skops")
    truth = [ff.class_names[i] for i in ff.labels]
    guess = [info["class_names"][c] for c in head.predict(ff.features)]
    assert report["accuracy"] == pytest.approx(metrics.accuracy_score(truth, guess))
    assert report["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy_score(truth, guess))
    expected = metrics.confusion_matrix(truth, guess, labels=report["classes"])
    assert report["confusion_matrix"] == expected.tolist()
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        truth, guess, labels=report["classes"], zero_division=0)
    for i, name in enumerate(report["classes"]):
        assert report["per_class"][name] == pytest.approx(
            {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]})
    text = cli("evaluate", digit_files["test"], "--head", tmp_path / "h.skops")
    assert f"accuracy: {report['accuracy']:.4f}" in text.stdout and "confusion matrix" in text.stdout


def test_refuses_features_of_another_extractor_or_width(cli, digit_files, tmp_path):
    fit_head(digit_files["train"], tmp_path / "h.skops")
    ff = read_features(digit_files["test"])
    other = write_feature_file(tmp_path / "other.h5", ff.features, ff.labels, ff.paths, ff.class_names, "abc123")
    result = cli("predict", other, "--head", tmp_path / "h.skops")
    assert result.exit_code == 1 and result.stdout == "" and "abc123" in result.stderr
    narrow = write_feature_file(tmp_path / "narrow.h5", ff.features[:, :10], ff.labels, ff.paths, ff.class_names)
    result = cli("evaluate", narrow, "--head", tmp_path / "h.skops")
    assert result.exit_code == 1 and "10 features per row" in result.stderr and "64" in result.stderr


class Planted:
    """A type no head contains: loading it would run its module's code."""

    def __init__(self):
        self.payload = "anything"


def test_a_head_file_with_a_type_we_do_not_trust_is_refused_unloaded(cli, digit_files, tmp_path):
    planted = tmp_path / "planted.skops"
    sio.dump({"format": FORMAT, "head": Planted(), "info": {}}, planted)
    result = cli("predict", digit_files["test"], "--head", planted)
    assert_one_line_error(result, "holds types diffclass does not load: tests.test_heads.Planted")


def test_fit_errors(cli, digit_files, tmp_path):
    ff = read_features(digit_files["train"])
    unlabeled = write_feature_file(tmp_path / "u.h5", ff.features[:20], -np.ones(20, int), ff.paths[:20], [])
    cases = [
        ((unlabeled, "--out", tmp_path / "a.skops"), "no labeled rows"),
        ((digit_files["train"], "--out", tmp_path / "b.skops", "--per-class", 1000),
         "class '0' has 142 labeled images, fewer than the 1000 per class"),
        ((digit_files["train"], "--out", tmp_path / "c.skops", "--per-class", 2, "--cv", 3, "--head", "logreg"),
         "--cv 3 needs"),
        ((digit_files["train"], "--out", tmp_path / "e.skops", "--cv", 3), "pass --head logreg or --head mlp"),
        ((tmp_path / "missing.h5", "--out", tmp_path / "d.skops"), "does not exist"),
        ((tmp_path / "u.h5", "--out", digit_files["train"]), "--overwrite"),
    ]
    for args, message in cases:
        result = cli("fit", *args)
        assert result.exit_code == 1 and message in result.stderr, (args, result.output)
    (tmp_path / "junk.skops").write_bytes(b"junk")
    result = cli("predict", digit_files["test"], "--head", tmp_path / "junk.skops")
    assert result.exit_code == 1 and "not a skops head file" in result.stderr


def test_cv_chooses_regularisation(digit_files, tmp_path):
    fit_head(digit_files["train"], tmp_path / "h.skops", HeadKind.logreg, per_class=10, cv=3)
    head, info = load_head(tmp_path / "h.skops")
    assert info["params"]["cv"] == 3 and head[-1].C == pytest.approx(info["params"]["C"])
    assert np.isclose(np.log10(head[-1].C) * 2, round(np.log10(head[-1].C) * 2))  # a point of the grid


def test_semi_head_clusters_a_graph_in_pieces():
    # Three far-apart blobs: their k-NN graph falls in pieces, whose spectral embedding maps a
    # whole blob to zero. One label each; class 0's labeled row is an outlier nearer to blob 1.
    rng = np.random.default_rng(0)
    centres = np.eye(3, 6) * 10
    X = np.concatenate([c + rng.normal(size=(100, 6)) for c in centres])
    truth = np.repeat(np.arange(3), 100)
    X[0] = centres[0] * 0.4 + centres[1] * 0.6
    targets = np.full(300, -1)
    targets[[0, 150, 250]] = [0, 1, 2]
    head = SpectralPseudoLabels(n_components=2).fit(X, targets)  # the 2 components that hold the blobs
    assert (head.predict(X[1:]) == truth[1:]).mean() > 0.97


def _blobs(centres, n: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([np.asarray(c, float) + rng.normal(size=(n, len(c))) for c in centres])


def _draw(truth: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Targets with `per_class` labeled rows of each class, the rest -1."""
    return fit_rows(truth, draw_per_class(truth, per_class, seed), HeadKind.semi)[1]


def test_labels_chosen_per_cluster_name_a_class_of_two_clusters():
    # As `suggest` picks them: the most typical image of each cluster, so class 0 (two clusters)
    # has two labels and the small class 2 one. One cluster per class would merge or split the
    # wrong blobs (0.62 of the rows right when forced); the labeled rows' class means do not.
    sizes, classes = [200, 200, 100, 30], [0, 0, 1, 2]
    X = np.concatenate([_blobs([c], n, seed) for seed, (c, n) in enumerate(zip(np.eye(4, 8) * 8, sizes))])
    truth = np.repeat(classes, sizes)
    targets = np.full(len(X), -1)
    for blob, (start, n) in enumerate(zip(np.cumsum([0] + sizes[:-1]), sizes)):
        rows = np.arange(start, start + n)
        targets[rows[np.linalg.norm(X[rows] - X[rows].mean(axis=0), axis=1).argmin()]] = classes[blob]
    head = SpectralPseudoLabels().fit(X, targets)
    assert head.uses_class_means(targets)
    assert (head.predict(X) == truth).mean() > 0.99
    auto = AutoHead().fit(X, targets)  # says why it could hold nothing out
    assert auto.choice_ == "semi" and auto.reason_.startswith("a class with one label; clusters stable"), auto.reason_


@pytest.mark.parametrize("per_class", [1, 3])
def test_auto_keeps_the_semi_head_on_clean_clusters(per_class):
    X, truth = _blobs(np.eye(4, 8) * 8), np.repeat(np.arange(4), 100)
    head = AutoHead().fit(X, _draw(truth, per_class))
    assert head.choice_ == "semi", head.reason_
    assert (head.predict(X) == truth).mean() > 0.99


def test_auto_avoids_one_cluster_per_class_when_each_class_is_five_digits(digit_files):
    # Two classes, digits 0-4 and 5-9: each class is five clusters, so the semi head's one
    # cluster per class cuts across both; cross-validation over the labeled rows sees it.
    train, test = read_features(digit_files["train"]), read_features(digit_files["test"])
    truth, test_truth = (train.labels >= 5).astype(int), (test.labels >= 5).astype(int)
    scores = {"auto": [], "semi": []}
    for seed in range(3):
        targets = _draw(truth, 10, seed)
        auto = AutoHead(random_state=seed)
        for name, estimator in (("auto", auto), ("semi", SpectralPseudoLabels())):
            head = Pipeline([("scale", StandardScaler()), (name, estimator)]).fit(train.features, targets)
            scores[name].append((head.predict(test.features) == test_truth).mean())
        assert auto.choice_ == "logreg" and "do not align" in auto.reason_, auto.reason_
    assert np.mean(scores["auto"]) > np.mean(scores["semi"]) + 0.1, scores


@pytest.mark.parametrize(("aligned_from", "misaligned_below", "said"), [
    (0.7, 0.4, "semi (classes and clusters found without labels align"),
    (1.01, 0.0, "semi (classes and clusters partly align"),  # cross-validation decides in between
    (1.01, 1.01, "logreg (classes and clusters found without labels do not align")])
def test_auto_with_several_labels_first_asks_whether_the_classes_are_clusters(
        digit_files, aligned_from, misaligned_below, said):
    train = read_features(digit_files["train"])  # ten digits: each class is one cluster
    auto = AutoHead(aligned_from=aligned_from, misaligned_below=misaligned_below)
    Pipeline([("scale", StandardScaler()), ("auto", auto)]).fit(train.features, _draw(train.labels, 3))
    assert f"{auto.choice_} ({auto.reason_}".startswith(said), auto.reason_


def test_auto_falls_back_to_logreg_on_rows_without_clusters():
    X = np.random.default_rng(0).normal(size=(400, 8))
    head = AutoHead().fit(X, _draw((X[:, 0] > 0).astype(int), 1))
    assert head.choice_ == "logreg" and "unstable" in head.reason_


@pytest.mark.parametrize("estimator", [SpectralPseudoLabels(), AutoHead()])
def test_unlabeled_rows_of_unknown_classes_do_not_pull_the_known_ones(estimator):
    # Open set: three labeled classes, two more blobs in the pool that no label names.
    X = _blobs(np.eye(5, 10) * 8)
    truth = np.repeat(np.arange(5), 100)
    targets = np.concatenate([_draw(truth[:300], 3), np.full(200, -1)])
    head = estimator.fit(X, targets)
    assert (head.predict(X[:300]) == truth[:300]).mean() > 0.98


def test_fit_defaults_to_auto_and_says_what_it_chose(cli, digit_files, tmp_path):
    result = cli("fit", digit_files["train"], "--out", tmp_path / "h.skops", "--per-class", 3)
    assert result.exit_code == 0, result.output
    head, info = load_head(tmp_path / "h.skops")
    assert info["head"] == "auto" and info["params"]["choice"] in ("semi", "logreg")
    assert f"auto: {info['params']['choice']} (classes and clusters" in result.stderr
    assert head[-1].choice_ == info["params"]["choice"]
