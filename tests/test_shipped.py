"""The shipped default extractor: its card must describe it exactly, and featurize uses it."""

import hashlib
import json
from pathlib import Path

from diffclass_cli.extractor_format import read_metadata
from diffclass_cli.features.extract import DEFAULT_MODEL
from diffclass_cli.features.h5 import read_features

CARD = DEFAULT_MODEL.with_suffix(".md")


def test_card_matches_the_shipped_file():
    assert DEFAULT_MODEL.is_file() and CARD.is_file()
    card = CARD.read_text()
    digest = hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert f"**sha256**: `{digest}`" in card
    assert DEFAULT_MODEL.stat().st_size < 20 * 1024 * 1024
    meta = read_metadata(DEFAULT_MODEL)
    for key, value in meta.items():
        if key != "feature_groups":
            assert f"{key}: {value if isinstance(value, str) else json.dumps(value)}\n" in card, key
    assert meta["trained_on"]["source"] == "mnist-sample:train"


def test_featurize_without_model_uses_the_shipped_extractor(cli, tmp_path: Path):
    result = cli("featurize", "digits:test", tmp_path / "d.h5")
    assert result.exit_code == 0, result.output
    attrs = read_features(tmp_path / "d.h5").attrs
    assert attrs["extractor_name"] == "mnist-sample-ddpm"
    assert attrs["extractor_sha256"] == hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
