"""Choosing extractor settings from unlabeled images alone. Features that describe what an
image shows should (1) give it the same nearest neighbours when only a nuisance changes
(another fixed noise tensor, the image moved by a pixel) and (2) fall into separate clusters.
Either alone misleads: at a high timestep the features of small images collapse to a few
coarse directions whose neighbours are stable but say little, and cluster separation alone
favours that coarseness too. The score is their product (see the model card for how it
tracked the label-based choice)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler, normalize

from diffclass_cli.backbone.checkpoint import load_checkpoint
from diffclass_cli.backbone.shifts import shifted
from diffclass_cli.console import log, progress
from diffclass_cli.data.loading import load_all, to_unit_range
from diffclass_cli.data.sources import ImageSource, open_source
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractors.extractor import FeatureGroup, resolve_taps
from diffclass_cli.extractors.onnx_export import build_extractor, pytorch_features
from diffclass_cli.extractors.spec import ExtractorSpec

# The second view of each image: the next noise seed, and the image moved one pixel right.
SECOND_VIEW = (1, (0, 1))
NEIGHBOURS = 10
# More clusters than most label sets have classes: the number of classes is not known at
# export, and over-clustering splits classes into their modes rather than merging classes.
CLUSTERS = 20
CANDIDATE_TIMESTEPS = (10, 25, 50, 100, 250, 500)
# Which of them `--timestep auto` may choose: the default and the larger ones whose signal energy is at least 1.5
# times the noise's (abar / (1 - abar) >= 1.5: t <= 220 of the linear 1000-step schedule, so none above its default
# of 200; t <= 430 of the cosine one). Each choice outside that band lost to the default on a domain where it was
# made: past equal signal and noise (t = 500: colour, the held-out domain, digits) the features keep what survives
# heavy noise, such as colour; near it (t = 250 on the textured-background digits, chosen against a default of 150
# and of 200) they gained at K = 1 and lost 0.013-0.016 at K = 10; below the default (t = 10 there: 0.13 / 0.59
# against 0.20 / 0.82 at K = 1 / 10) they keep what little noise leaves intact, such as a texture. Each nuisance
# forms stable, well separated clusters, which is what the label-free score rewards.
MIN_SNR = 1.5
CHOICE_IMAGES = 2000  # a sample of the unlabeled images
MIN_CHOICE_IMAGES = 8


def extract(checkpoint: Path, spec: ExtractorSpec, images: torch.Tensor, second_view: bool = False) -> np.ndarray:
    """Features of `images` `[N, C, H, W]` in [0, 1] (or of their `SECOND_VIEW`)."""
    offset = (0, 0)
    if second_view:
        seed_step, offset = SECOND_VIEW
        spec = replace(spec, noise_seed=spec.noise_seed + seed_step)
    return pytorch_features(checkpoint, spec)(shifted(images, offset))


def angular_space(features: np.ndarray) -> np.ndarray:
    """Each column standardised, each row scaled to unit length."""
    return normalize(StandardScaler().fit_transform(features))


def neighbour_agreement(first: np.ndarray, second: np.ndarray, k: int = NEIGHBOURS) -> float:
    """The mean fraction of each row's `k` nearest neighbours (by angle, after standardising
    each column) that the two views of the same rows share (fewer neighbours for very few rows)."""
    k = min(k, len(first) - 1)
    neighbours = []
    for features in (first, second):
        space = angular_space(features)
        found = NearestNeighbors(n_neighbors=k + 1).fit(space).kneighbors(space, return_distance=False)
        neighbours.append(found[:, 1:])
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(*neighbours)]))


def cluster_separation(features: np.ndarray, clusters: int = CLUSTERS, seed: int = 0) -> float:
    """The mean silhouette (by angle) of k-means clusters of the rows in `angular_space`."""
    space = angular_space(features)
    found = KMeans(min(clusters, len(space) - 1), n_init=3, random_state=seed).fit_predict(space)
    return float(silhouette_score(space, found, metric="cosine"))


def label_free_score(first: np.ndarray, second: np.ndarray) -> float:
    """High for features whose neighbours survive a nuisance and whose clusters are apart."""
    return neighbour_agreement(first, second) * cluster_separation(first)



def candidate_timesteps(config, default: int) -> tuple[int, ...]:
    """`default` and the larger CANDIDATE_TIMESTEPS of `config`'s schedule whose signal-to-noise
    ratio is at least MIN_SNR."""
    abar = config.alphas_cumprod().numpy()
    return tuple(sorted({default} | {t for t in CANDIDATE_TIMESTEPS
                                     if default < t < len(abar) and abar[t] / (1 - abar[t]) >= MIN_SNR}))


def choose_unlabeled(checkpoint: Path, spec: ExtractorSpec, *, timestep: bool, taps: bool, images: str | None = None,
                     data_root: Path | None = None) -> tuple[ExtractorSpec, dict]:
    """`spec` with the candidate timestep (then, at it, the tap set) that has the best
    `label_free_score` on a sample of the unlabeled `images` (default: the source the backbone
    was trained on), where that choice holds on both halves of the sample too (else the
    default stays), and the record of each choice for the extractor's metadata."""
    ckpt = load_checkpoint(checkpoint)
    images = images or ckpt.training.get("data", {}).get("source")
    if not images:
        raise DiffclassError(f"{checkpoint} does not say which images it was trained on: give --choose-on IMAGES")
    sample = unlabeled_sample(open_source(images, data_root), ckpt.config.image_size, ckpt.config.channels)
    if len(sample) < MIN_CHOICE_IMAGES:
        raise DiffclassError(f"{images} has {len(sample)} readable images; the label-free choice needs at least "
                             f"{MIN_CHOICE_IMAGES} (it compares the two halves of its sample)")
    by = (f"agreement of the {NEIGHBOURS} nearest neighbours with a second view (the next noise seed, moved one "
          f"pixel) x silhouette of {CLUSTERS} k-means clusters, on the sample and on each half of it")
    notes = {}
    if timestep:
        if not ckpt.config.noised:
            raise DiffclassError(f"{checkpoint} is a {ckpt.config.kind} backbone: it has no timestep to choose")
        default = spec.diffusion_timesteps[0]
        scores = timestep_scores(checkpoint, spec, sample, candidate_timesteps(ckpt.config, default))
        chosen, notes["timestep_choice"] = _choose("timestep", scores, default, by, images, sample)
        spec = replace(spec, timesteps=(chosen,))
    if taps:
        scores = tap_scores(checkpoint, spec, sample)
        chosen, notes["taps_choice"] = _choose("taps", scores, DEFAULT_TAP_SET, by, images, sample)
        spec = replace(spec, taps=tuple(chosen.split("+")))
    return spec, notes


def _choose(what: str, scores: dict, default, by: str, images: str, sample: torch.Tensor) -> tuple:
    """The candidate with the best score on the whole sample if it also beats `default` on each
    half of the sample, else `default`; and the record of the choice."""
    whole = {name: score[0] for name, score in scores.items()}
    best = max(whole, key=whole.get)
    held = all(score[best] > score[default] for score in ({n: s[half] for n, s in scores.items()} for half in (1, 2)))
    chosen = best if held else default
    why = "the best score" if chosen == best else f"the default: {best} scored best but not on both halves"
    log.info(f"label-free score by {what}: " + ", ".join(f"{k} {s:.3f}" for k, s in whole.items())
             + f"; chose {chosen} ({why})")
    return chosen, {"by": by, "images": images, "sample": len(sample), "chose": why,
                    "scores": {str(k): round(s, 4) for k, s in whole.items()},
                    "half_scores": {str(k): [round(s[1], 4), round(s[2], 4)] for k, s in scores.items()}}


DEFAULT_TAP_SET = "default"


def candidate_tap_sets(config) -> list[tuple[str, ...]]:
    """The default set, and it with each other decoder tap added. Every other kind of set lost to
    the default on a domain where it was chosen: a tap alone; every tap at once (0.016-0.045 at
    K = 10 on the inverted-rotated digits, random colours and the held-out domain); an encoder
    tap, which keeps the input's colour or texture (`down0`, and `down1` on random colours: -0.028)."""
    groups = config.tap_groups
    return [(DEFAULT_TAP_SET,)] + [(DEFAULT_TAP_SET, name) for name in groups["decoder"]
                                   if name not in groups["default"]]


def unlabeled_sample(source: ImageSource, image_size: int, channels: int, n: int = CHOICE_IMAGES,
                     seed: int = 0) -> torch.Tensor:
    """Up to `n` images of `source` (a fixed random sample; labels, if any, are not read), in [0, 1]."""
    rows = np.sort(np.random.default_rng(seed).permutation(len(source))[:n])
    images, _, _ = load_all(source.subset(rows), image_size, channels)
    return torch.from_numpy(to_unit_range(images))


def scored(first: np.ndarray, second: np.ndarray) -> tuple[float, float, float]:
    """`label_free_score` of the two views' rows, of the even rows and of the odd rows (halves of
    the same make-up: the sample is in source order, which may be class by class)."""
    return (label_free_score(first, second), label_free_score(first[0::2], second[0::2]),
            label_free_score(first[1::2], second[1::2]))


def timestep_scores(checkpoint: Path, spec: ExtractorSpec, images: torch.Tensor,
                    candidates: tuple[int, ...] = CANDIDATE_TIMESTEPS) -> dict[int, tuple[float, float, float]]:
    """The label-free scores (`scored`) of each candidate timestep's features (two views of `images`)."""
    scores = {}
    for t in progress(candidates, desc="scoring timesteps", unit="timestep"):
        at_t = replace(spec, timesteps=(t,))
        first, second = (extract(checkpoint, at_t, images, second_view) for second_view in (False, True))
        scores[t] = scored(first, second)
    return scores


def tap_scores(checkpoint: Path, spec: ExtractorSpec, images: torch.Tensor) -> dict[str, tuple[float, float, float]]:
    """The label-free scores (`scored`) of each of `candidate_tap_sets`, from one pass per view with every tap."""
    every = replace(spec, taps=("all",))
    first, second = (extract(checkpoint, every, images, second_view) for second_view in (False, True))
    return {name: scored(first[:, columns], second[:, columns])
            for name, columns in progress(tap_set_columns(checkpoint, every).items(), desc="scoring tap sets",
                                          unit="set")}


def tap_set_columns(checkpoint: Path, every: ExtractorSpec) -> dict[str, np.ndarray]:
    """The columns of each of `candidate_tap_sets` (named by its taps joined with '+') in the
    features of `every`, a spec with every tap."""
    extractor, ckpt = build_extractor(checkpoint, every)
    groups = extractor.feature_groups()
    return {"+".join(taps): tap_columns(groups, resolve_taps(ckpt.config, taps))
            for taps in candidate_tap_sets(ckpt.config)}


def tap_columns(groups: list[FeatureGroup], taps: list[str]) -> np.ndarray:
    """The feature columns that come from `taps` (group names are `[t<T>/]<tap>[/<pool>]`)."""
    return np.concatenate([np.arange(g.start, g.stop) for g in groups if set(g.name.split("/")) & set(taps)])
