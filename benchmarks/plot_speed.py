"""How long `plot` takes to project a feature file, and how well classes separate in each map:
the projections side by side on the same rows in one run (seconds, 5-NN accuracy in the map).

    python benchmarks/plot_speed.py FEATURES.h5 [--rows 3000] [--tsne-iterations 350,500,1000]

UMAP's first call in a process compiles its numba functions: it is timed first, as `plot` meets it.
"""

import argparse
import time
import warnings
from pathlib import Path

from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler

from diffclass_cli.features.h5 import open_feature_file
from diffclass_cli.plot import separation, subsample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features", type=Path)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--tsne-iterations", default="350,500,1000")
    args = parser.parse_args()
    with open_feature_file(args.features) as reader:
        rows = reader.take(subsample(reader.rows, args.rows, 0))
    x = PCA(min(50, *rows.features.shape), random_state=0).fit_transform(StandardScaler().fit_transform(rows.features))
    began = time.perf_counter()
    import umap

    warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
    candidates = [("umap (import and first call)", lambda: umap.UMAP(random_state=0).fit_transform(x))]
    candidates += [(f"tsne, {n} iterations", lambda n=int(n): TSNE(2, init="pca", max_iter=n, random_state=0)
                    .fit_transform(x)) for n in args.tsne_iterations.split(",")]
    for name, project in candidates:
        start = began if name.startswith("umap") else time.perf_counter()
        embedding = project()
        print(f"{name}: {time.perf_counter() - start:.2f} s, 5-NN accuracy in the map "
              f"{separation(embedding, rows.labels):.3f}", flush=True)


if __name__ == "__main__":
    main()
