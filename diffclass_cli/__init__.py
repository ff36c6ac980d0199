"""diffclass: few-shot image classification with features of a diffusion model trained on
unlabeled images.

The Python API (diffclass_cli/api.py; the commands call the same functions):

    from diffclass_cli import featurize, fit, predict
    featurize("photos/train", "train.h5")
    fit("train.h5", "head.skops")
    for p in predict("photos/new", head="head.skops"):
        print(p.path, p.label, p.confidence)

Its names are imported when first used, so `import diffclass_cli` stays light.
"""

__version__ = "0.1.0"
__all__ = ["Features", "Prediction", "evaluate", "export", "featurize", "fit", "load_extractor", "load_head",
           "predict", "train"]


def __getattr__(name: str):
    if name in __all__:
        from diffclass_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'diffclass_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
