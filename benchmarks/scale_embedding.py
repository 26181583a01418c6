"""Scale check: skicon t-SNE on 70,000 MNIST-1D points (40 features), alone.

Prints the wall time, the repulsion mode that ``mode="auto"`` chose, the peak resident memory
of the process and the 10-NN accuracy (5-fold CV) of the map. MNIST-1D is generated
procedurally (``mnist1d.data.make_dataset``), so nothing is downloaded.

Run ``python -m benchmarks.scale_embedding [--n 70000] [--n-jobs 2]``.
"""

import argparse
import resource
import time

import numpy as np


def mnist1d(n):
    """``n`` MNIST-1D samples (train and test splits together) and their labels."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = n
    data = make_dataset(args)
    X = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    return X, np.concatenate([data["y"], data["y_test"]])


def main(argv=None):
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=70_000)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args(argv)

    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from skicon import ICONEmbedding

    X, y = mnist1d(args.n)
    start = time.perf_counter()
    est = ICONEmbedding(random_state=0, n_jobs=args.n_jobs)
    Z = est.fit_transform(X)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    acc = cross_val_score(KNeighborsClassifier(10), Z, y, cv=5).mean()
    print(f"{X.shape[0]} x {X.shape[1]}: {wall:.1f} s, mode={est.mode_}, peak {peak:.0f} MiB, "
          f"finite={bool(np.isfinite(Z).all())}, 10-NN accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
