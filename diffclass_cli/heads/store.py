"""Head files (skops): the fitted Pipeline plus what it was fitted on.

skops reconstructs objects from an allowlist of types instead of running pickle code, so
loading a head never executes code from the file.
"""

import sys
import zipfile
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from diffclass_cli.errors import DiffclassError
from diffclass_cli.files import atomic_output, existing_file


def _import_skops():
    """skops lists scikit-learn's estimators when imported, which imports every scikit-learn
    package, among them its array-API wrapper of torch: with torch installed that alone is about
    3 s of every predict's start-up. The wrapper is hidden while skops is imported (pkgutil skips
    a package that fails to import) and put back after."""
    wrapper = "sklearn.externals.array_api_compat.torch"
    hidden = wrapper not in sys.modules
    if hidden:
        sys.modules[wrapper] = None
    try:
        import skops.io
    finally:
        if hidden:
            del sys.modules[wrapper]
    return skops.io


sio = _import_skops()

FORMAT = "diffclass-head"
# Types beyond skops' defaults that our heads contain (the semi head, MLP optimizer state).
TRUSTED_TYPES = [
    "diffclass_cli.heads.models.AutoHead",
    "diffclass_cli.heads.models.SpectralPseudoLabels",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
]


def save_head(path: Path, head: Pipeline, info: dict, overwrite: bool = False) -> None:
    with atomic_output(path, overwrite) as tmp:
        sio.dump({"format": FORMAT, "head": head, "info": info}, tmp)


def load_head(path: Path) -> tuple[Pipeline, dict]:
    """The head and its info; a clear error for a missing, foreign or untrusted file."""
    path = existing_file(path, "head")
    try:
        _refuse_inflating(path)
        untrusted = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
        if untrusted:
            raise DiffclassError(f"{path} holds types diffclass does not load: {', '.join(untrusted)}")
        content = sio.load(path, trusted=TRUSTED_TYPES)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise DiffclassError(f"{path} is not a skops head file ({type(err).__name__}: {err})") from err
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise DiffclassError(f"{path} is a skops file but not a diffclass head")
    _check_info(content.get("head"), content.get("info"), path)
    return content["head"], content["info"]


MAX_HEAD_BYTES = 512 * 1024 * 1024  # what a head's members may inflate to, all together


def _refuse_inflating(path: Path) -> None:
    """A head whose zip members declare more than MAX_HEAD_BYTES is refused before any is
    inflated; a member is never read past the size it declares (zipfile stops there), so a
    small file cannot inflate into gigabytes."""
    with zipfile.ZipFile(path) as archive:
        declared = sum(member.file_size for member in archive.infolist())
    if declared > MAX_HEAD_BYTES:
        raise DiffclassError(f"{path} declares {declared / 2**20:.0f} MB of content, over the "
                             f"{MAX_HEAD_BYTES >> 20} MB a head may hold: it is damaged or not a head diffclass wrote")


def _check_info(head, info, path: Path) -> None:
    """What predict, evaluate and info read of a head file, checked before anything uses it."""
    def damaged(what: str):
        return DiffclassError(f"{path} is damaged: {what} (fit it again)")

    if not isinstance(head, Pipeline) or not hasattr(head, "classes_"):
        raise damaged("it holds no fitted classifier")
    if not isinstance(info, dict):
        raise damaged("it has no description")
    names = info.get("class_names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise damaged("its class names are not a list of text")
    classes = np.asarray(head.classes_)
    if classes.dtype.kind not in "iu" or len(classes) < 2 or classes.min() < 0 or classes.max() >= len(names):
        raise damaged("its classifier's classes do not match its class names")
    if not (isinstance(info.get("feature_dim"), int) and 1 <= info["feature_dim"] <= 10_000_000):
        raise damaged("its feature_dim is not a count")
    for key in ("extractor_sha256", "extractor_name", "extractor_path", "head"):
        if not isinstance(info.get(key, ""), str):
            raise damaged(f"its {key} is not text")
