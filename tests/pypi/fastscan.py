"""Indexes written and searched by PyPI faiss-cpu, for tests/pypi_faiss_parity.rs.

    target/venv/bin/python tests/pypi/fastscan.py OUT_DIR

Trains and fills, on seeded synthetic data (numpy), the IVF-PQ FastScan shapes RVC users get
from faiss-cpu (`IVF{n},PQ{M}x4fs`, `x4fsr`, each bare and with `,RFlat`, one of those with
k_factor 4 and one with 2; 256-d PQ128 as RVC v1, 768-d PQ192 / PQ384 as RVC v2; L2 and inner
product) and one RVC-style IVF-Flat file (`IVF{n},Flat`, 768-d, RVC's n and steps). Training
also sees a region no added vector comes from, so some lists stay empty. Every index is written
with `faiss.write_index`, then searched single-threaded, one query at a time (as a realtime
host searches), k = 8, at n_probe 1 and 8. Writes, per case `<name>`:

    <name>.index           the faiss file
    <name>.queries.npy     float32 (nq, d)
    <name>.np<P>.I.npy     int64 (nq, k): faiss-cpu's ids at n_probe P
    <name>.np<P>.D.npy     float32 (nq, k): faiss-cpu's distances at n_probe P
    <name>.np<P>.base.*    refined cases: the same from the base index alone at k·k_factor

and `cases.json`: the faiss version and, per case, its factory string, dimension, metric,
k_factor, vector and list counts, empty lists and the n_probes searched. Prints one line per
case and exits non-zero on any error (a missing faiss or numpy names the fix).
"""

import json
import math
import os
import sys
import time

try:
    import numpy as np
    import faiss
except ImportError as e:  # the Rust test turns this into a skip (or a failure under CI)
    print(f"MISSING-MODULE: {e.name}: {e}", file=sys.stderr)
    sys.exit(3)

K = 8
NPROBES = [1, 8]
ADD = 3000
QUERIES = 200
NLIST = 64
PQ_NITER = 6

# (name, dim, factory, metric, k_factor set by hand or None)
FASTSCAN_CASES = [
    ("v1_l2_x4fs", 256, f"IVF{NLIST},PQ128x4fs", "L2", None),
    ("v1_ip_x4fsr", 256, f"IVF{NLIST},PQ128x4fsr", "IP", None),
    ("v1_l2_x4fsr_rflat", 256, f"IVF{NLIST},PQ128x4fsr,RFlat", "L2", None),
    ("v1_ip_x4fs_rflat_k4", 256, f"IVF{NLIST},PQ128x4fs,RFlat", "IP", 4.0),
    ("v2_ip_x4fs", 768, f"IVF{NLIST},PQ192x4fs", "IP", None),
    ("v2_l2_x4fsr", 768, f"IVF{NLIST},PQ384x4fsr", "L2", None),
    ("v2_ip_x4fsr_rflat_k2", 768, f"IVF{NLIST},PQ192x4fsr,RFlat", "IP", 2.0),
    ("v2_l2_x4fs_rflat", 768, f"IVF{NLIST},PQ384x4fs,RFlat", "L2", None),
]


def clustered(dim, seed, n_data, n_far, n_queries):
    """Rows resembling speech features: cluster centres plus anisotropic noise, some drifting
    between two centres; the far rows are shifted away from all of them."""
    rng = np.random.default_rng(seed)
    clusters = 24
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    spread = (0.15 + 0.35 * rng.random(dim)).astype(np.float32)

    def rows(n):
        c = rng.integers(clusters, size=n)
        c2 = rng.integers(clusters, size=n)
        t = np.where(rng.random(n) < 0.3, rng.random(n) * 0.5, 0.0).astype(np.float32)
        noise = rng.standard_normal((n, dim)).astype(np.float32)
        out = centres[c] + t[:, None] * (centres[c2] - centres[c]) + spread * noise
        return np.ascontiguousarray(out, dtype=np.float32)

    data = rows(n_data)
    far = rows(n_far) + np.float32(6.0)
    queries = rows(n_queries)
    return data, far, queries


def normalise(x):
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def list_sizes(index):
    ivf = faiss.extract_index_ivf(index)
    return [ivf.invlists.list_size(i) for i in range(ivf.nlist)]


def search_one_by_one(index, queries, k):
    ids = np.empty((len(queries), k), dtype=np.int64)
    dist = np.empty((len(queries), k), dtype=np.float32)
    for i, q in enumerate(queries):
        d, l = index.search(q[None, :], k)
        ids[i], dist[i] = l[0], d[0]
    return ids, dist


def search_all(index, queries, out_dir, name):
    """faiss's results at every n_probe; for a refined index also its base's own results at
    k·k_factor (the candidates the refinement re-ranks)."""
    ivf = faiss.extract_index_ivf(index)
    top = faiss.downcast_index(index)
    for nprobe in NPROBES:
        ivf.nprobe = nprobe
        ids, dist = search_one_by_one(index, queries, K)
        np.save(os.path.join(out_dir, f"{name}.np{nprobe}.I.npy"), ids)
        np.save(os.path.join(out_dir, f"{name}.np{nprobe}.D.npy"), dist)
        if isinstance(top, faiss.IndexRefine):
            base = faiss.downcast_index(top.base_index)
            ids, dist = search_one_by_one(base, queries, int(K * top.k_factor))
            np.save(os.path.join(out_dir, f"{name}.np{nprobe}.base.I.npy"), ids)
            np.save(os.path.join(out_dir, f"{name}.np{nprobe}.base.D.npy"), dist)


def fastscan_case(out_dir, seed, name, dim, factory, metric, k_factor):
    data, far, queries = clustered(dim, seed, ADD, ADD // 10, QUERIES)
    train = np.concatenate([data, far])
    mt = faiss.METRIC_L2 if metric == "L2" else faiss.METRIC_INNER_PRODUCT
    if metric == "IP":
        data, train, queries = normalise(data), normalise(train), normalise(queries)
    index = faiss.index_factory(dim, factory, mt)
    if k_factor is not None:
        faiss.downcast_index(index).k_factor = k_factor
    # Fewer k-means rounds for the 4-bit codebooks than faiss's 25 (training time only: the
    # file and its search are the same kind either way).
    faiss.downcast_index(faiss.extract_index_ivf(index)).pq.cp.niter = PQ_NITER
    index.train(train)
    index.add(data)
    refined = factory.endswith(",RFlat")
    if refined:
        assert isinstance(faiss.downcast_index(index), faiss.IndexRefineFlat), factory
    return index, queries, refined


def flat_case(out_dir, seed, dim):
    """RVC's own steps (infer-web.py's train_index): n = min(16·√N, N // 39), nprobe 1, train,
    add in batches of 8192."""
    data, far, queries = clustered(dim, seed, ADD, ADD // 10, QUERIES)
    n_ivf = min(int(16 * math.sqrt(ADD)), ADD // 39)
    factory = f"IVF{n_ivf},Flat"
    index = faiss.index_factory(dim, factory)
    faiss.extract_index_ivf(index).nprobe = 1
    index.train(np.concatenate([data, far]))
    for i in range(0, len(data), 8192):
        index.add(data[i : i + 8192])
    return index, queries, factory, n_ivf


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    faiss.omp_set_num_threads(1)
    cases = []

    def finish(name, index, queries, factory, dim, metric, k_factor, refined, structure):
        started = time.time()
        path = os.path.join(out_dir, f"{name}.index")
        faiss.write_index(index, path)
        np.save(os.path.join(out_dir, f"{name}.queries.npy"), queries)
        search_all(index, queries, out_dir, name)
        sizes = list_sizes(index)
        case = {
            "name": name,
            "file": f"{name}.index",
            "structure": structure,
            "factory": factory,
            "dim": dim,
            "metric": metric,
            "refined": refined,
            "k_factor": k_factor,
            "ntotal": int(index.ntotal),
            "nlist": len(sizes),
            "empty_lists": sum(1 for s in sizes if s == 0),
            "k": K,
            "nprobes": NPROBES,
            "queries": len(queries),
        }
        cases.append(case)
        print(
            f"{name}: {factory} {metric} d {dim}, {case['ntotal']} vectors, "
            f"{case['empty_lists']}/{case['nlist']} lists empty, searched in "
            f"{time.time() - started:.1f}s",
            flush=True,
        )

    for i, (name, dim, factory, metric, k_factor) in enumerate(FASTSCAN_CASES):
        index, queries, refined = fastscan_case(out_dir, 100 + i, name, dim, factory, metric, k_factor)
        if refined:
            k_factor = float(faiss.downcast_index(index).k_factor)
        finish(name, index, queries, factory, dim, metric, k_factor, refined, "ivf_pq_fastscan")

    index, queries, factory, _ = flat_case(out_dir, 200, 768)
    finish("v2_rvc_ivf_flat", index, queries, factory, 768, "L2", None, False, "ivf_flat")

    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump({"faiss_version": faiss.__version__, "cases": cases}, f, indent=1)
    print(f"faiss {faiss.__version__}: {len(cases)} cases written to {out_dir}")


if __name__ == "__main__":
    main()
