"""Choices the command line offers, in a module with no heavy imports, so that building the
CLI does not load scikit-learn, matplotlib or onnxruntime. Each is also importable from the
module that implements it."""

from enum import Enum


class HeadKind(str, Enum):
    """See heads/models.py."""

    auto = "auto"
    logreg = "logreg"
    mlp = "mlp"
    semi = "semi"

    def __str__(self) -> str:  # as its value in messages ("auto: semi (...)"), as a str would be
        return self.value


class Projection(str, Enum):
    """See plot.py."""

    umap = "umap"
    tsne = "tsne"
    pca = "pca"


class Engine(str, Enum):
    """See features/extract.py."""

    local = "local"
    ray = "ray"


class Device(str, Enum):
    """See device.py (torch) and features/runtime.py (onnxruntime)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class FeatureDtype(str, Enum):
    """See features/h5.py."""

    float32 = "float32"
    float16 = "float16"


class OutputFormat(str, Enum):
    """See heads/apply.py (predict's output)."""

    csv = "csv"
    jsonl = "jsonl"


class LabelChoice(str, Enum):
    """See benchmark/protocol.py: how the labeled images of a draw are chosen."""

    random = "random"  # K per class, drawn at random
    suggest = "suggest"  # K x classes, as `diffclass suggest` picks them from the pool
    pool = "pool"  # K x classes drawn at random from the whole pool, as a user labels without suggest
