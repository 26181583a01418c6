"""
Contrastive training on several processes
=========================================

Launch this script with ``torchrun``::

    torchrun --nproc_per_node=2 examples/distributed_contrastive.py

Each process initialises :mod:`torch.distributed` (``gloo`` on CPUs, ``nccl`` with one GPU per
process) and fits the same :class:`~skicon.ICONContrastive` on the same data with the same
integer ``random_state``. skicon sees the process group and splits every global batch among the
processes: each encodes its share, the representations are gathered with their gradients, and
every process evaluates the supervised-contrastive loss (SupCon) of the whole batch, so the
model is the one a single process would train. Every process ends with the same fitted estimator,
a plain one that pickles and runs without :mod:`torch.distributed`.

Run without ``torchrun`` it trains in one process, the ordinary way. (This example is not
executed when the documentation is built: it needs the launcher.)
"""

import os
import pickle
import time

import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

from skicon import ICONContrastive

# %%
# One process per rank: ``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK.
launched = "RANK" in os.environ
use_cuda = torch.cuda.is_available()
if launched:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
rank = dist.get_rank() if launched else 0
world_size = dist.get_world_size() if launched else 1
device = f"cuda:{torch.cuda.current_device()}" if use_cuda else "cpu"
torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))

# %%
# The same data and the same integer ``random_state`` on every rank (skicon refuses ranks whose
# seeds differ, e.g. ``random_state=None``).
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
est = ICONContrastive(n_components=16, batch_size=256, max_iter=30, random_state=0, device=device)
start = time.perf_counter()
est.fit(X_train, y_train)
seconds = time.perf_counter() - start

# %%
# Every rank holds the same model: compare a checksum of the test embedding across ranks.
Z_test = est.transform(X_test)
if launched:
    checksum = torch.tensor([float(np.abs(Z_test).sum())], dtype=torch.float64)
    sums = [torch.zeros_like(checksum) for _ in range(world_size)]
    dist.all_gather(sums, checksum)
    same = len({float(s) for s in sums}) == 1
else:
    same = True

# %%
# Rank 0 reports, and checks that the fitted model is a plain pickle-able estimator.
if rank == 0:
    knn = KNeighborsClassifier(n_neighbors=10).fit(est.transform(X_train), y_train)
    restored = pickle.loads(pickle.dumps(est))
    print(f"{world_size} process(es), device {device}: fit in {seconds:.1f} s, {est.n_iter_} iterations")
    print(f"10-NN test accuracy of the representation: {knn.score(Z_test, y_test):.3f}")
    print(f"identical models on every rank: {same}; unpickled copy agrees: "
          f"{np.allclose(restored.transform(X_test), Z_test)}")

if launched:
    dist.destroy_process_group()
