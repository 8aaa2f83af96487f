"""``python -m knnblend.bench``: knnblend against PyPI faiss-cpu in one process.

Both engines search the same faiss-written RVC index files (``IVF{n},Flat`` with RVC's list
rule, ``nprobe`` 1, k 8) with the same queries (by default a speech-like stream: runs of frames
near one cluster of the index, then the next), calls alternating, one thread each
(``faiss.omp_set_num_threads(1)``): single-frame search and RVC's realtime batches (16 and 32
frames per call), p50/p99/p99.9/max per call, with a control for single frames: constant work as
long as each engine's p50, alternating the same way (the tail the machine's own stalls give
such calls); then single frames and batches of 16 again with the caches cold
(before every call a sweep over ``--sweep-mib`` MiB of other memory, as the content encoder
and the synthesizer of a realtime RVC pipeline evict them between one block's search and the
next). Then the CPU cost per second of audio (RVC's
100 frames per second in blocks of 16) with faiss at its default OpenMP threads against
knnblend. Figures are ratios measured in this run; they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np

import knnblend

SHAPES = {
    "v2-10k": (768, 10_000),
    "v2-30k": (768, 30_000),
    "v2-100k": (768, 100_000),
    "v2-200k": (768, 200_000),
    "v1-30k": (256, 30_000),
}


def cluster_centres(rng, n, d):
    """The cluster centres of an index of `n` frames (one per 50 frames), drawn first from `rng`."""
    return rng.standard_normal((max(8, n // 50), d)).astype(np.float32)


def rvc_like(n, d, seed):
    """The stored frames: clusters (phones) of feature vectors, like a ContentVec bank."""
    rng = np.random.default_rng(seed)
    centres = cluster_centres(rng, n, d)
    x = centres[rng.integers(0, len(centres), n)]
    return (x + 0.3 * rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)


def speech_queries(nq, d, n, seed, noise_seed):
    """Input frames as a voice produces them: runs of 4 to 16 frames (40 to 160 ms at RVC's
    100 frames per second) near one of the index's clusters, then the next, with fresh noise of
    the stored frames' size."""
    centres = cluster_centres(np.random.default_rng(seed), n, d)
    rng = np.random.default_rng(noise_seed)
    at = []
    while len(at) < nq:
        at.extend([rng.integers(0, len(centres))] * int(rng.integers(4, 17)))
    x = centres[np.asarray(at[:nq])]
    return (x + 0.3 * rng.standard_normal((nq, d)).astype(np.float32)).astype(np.float32)


def index_file(faiss, cache, name, d, n):
    path = os.path.join(cache, f"bench_{name}.index")
    if not os.path.exists(path):
        x = rvc_like(n, d, seed=1)
        n_ivf = min(int(16 * math.sqrt(n)), n // 39)
        index = faiss.index_factory(d, f"IVF{n_ivf},Flat")
        index.train(x)
        index.add(x)
        faiss.write_index(index, path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


def percentiles(times_ns):
    t = np.sort(np.asarray(times_ns, dtype=np.float64)) / 1e3
    return {p: float(np.percentile(t, p)) for p in (50, 99, 99.9)} | {"max": float(t[-1])}


def alternate(fx, kx, queries, batch, sweep=None, calls=None):
    """Calls alternate between the engines, the same queries for both; with `sweep`, it runs
    (untimed) before every call. At most `calls` calls per engine."""
    tf, tk = [], []
    clock = time.perf_counter_ns
    starts = range(0, len(queries) - batch + 1, batch)
    for i in starts[:calls]:
        q = queries[i : i + batch]
        for engine, times in ((fx, tf), (kx, tk)):
            if sweep is not None:
                sweep()
            t0 = clock()
            engine.search(q, 8)
            times.append(clock() - t0)
    return percentiles(tf), percentiles(tk)


class ConstantWork:
    """The machine's own tail: a call that does the same work every time (sums of a small
    array that stays in L1), sized to take `us` microseconds. Its p99.9 over p50 is what the
    timing thread's stalls (timer ticks, the hypervisor) add to any call that long."""

    def __init__(self, us):
        self.a = np.ones(256, dtype=np.float32)
        self.reps = 1
        clock = time.perf_counter_ns
        for _ in range(3):  # calibrate on the median of a few timings
            times = []
            for _ in range(31):
                t0 = clock()
                self.search(None, 0)
                times.append(clock() - t0)
            per = max(float(np.median(times)) / 1e3 / self.reps, 1e-3)
            self.reps = max(1, round(us / per))

    def search(self, _q, _k):
        a = self.a
        for _ in range(self.reps):
            a.sum()


def cpu_per_audio_second(engine, queries, seconds):
    """Process CPU seconds (every thread of the process) per second of audio, paced as a
    realtime host calls: RVC's 100 frames per second, 16 frames every 160 ms of wall time, so
    what faiss's OpenMP threads burn between calls (they spin before they sleep) counts too."""
    frames = int(100 * seconds)
    clock = time.perf_counter
    t0, start = time.process_time(), clock()
    for n, i in enumerate(range(0, frames, 16)):
        j = i % (len(queries) - 16)
        if engine is not None:
            engine.search(queries[j : j + 16], 8)
        wait = start + (n + 1) * 0.16 - clock()
        if wait > 0:
            time.sleep(wait)
    return (time.process_time() - t0) / max(seconds, clock() - start)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m knnblend.bench", description=__doc__)
    ap.add_argument("--shapes", default="v2-10k,v2-30k,v1-30k", help=f"of {','.join(SHAPES)}")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--audio-seconds", type=float, default=10.0,
                    help="length of the paced CPU-per-second-of-audio run, per engine and shape")
    ap.add_argument("--cache", default=os.path.join("target", "python-bench"))
    ap.add_argument("--sweep-mib", type=int, default=32,
                    help="MiB of other memory read before every call of the cold rows (0: no "
                         "cold rows)")
    ap.add_argument("--stream", choices=["speech", "random"], default="speech",
                    help="queries: runs of frames near the index's clusters, as speech gives "
                         "(default), or vectors of other clusters than the index's (no locality, "
                         "every query far from every list)")
    args = ap.parse_args(argv)
    import faiss

    os.makedirs(args.cache, exist_ok=True)
    default_threads = faiss.omp_get_max_threads()
    print(f"peer: faiss-cpu {faiss.__version__} from PyPI ({faiss.get_compile_options().strip()}), "
          f"against knnblend (this build); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("per call, microseconds; ratio = faiss / knnblend (> 1: knnblend faster); "
          f"queries: {args.stream} stream, nprobe 1, k 8; cold: {args.sweep_mib} MiB of other "
          "memory read before every call, as a pipeline's models do between searches; machine: "
          "constant work as long as each engine's p50, the tail the machine's own stalls give "
          "calls that long (its p99.9 ratio is the best an engine without a tail of its own "
          "could show here)")
    for name in args.shapes.split(","):
        d, n = SHAPES[name]
        path = index_file(faiss, args.cache, name, d, n)
        fx, kx = faiss.read_index(path), knnblend.read_index(path)
        fx.nprobe = kx.nprobe = 1
        if args.stream == "speech":
            queries = speech_queries(args.queries, d, n, seed=1, noise_seed=2)
        else:
            queries = rvc_like(args.queries, d, seed=2)
        faiss.omp_set_num_threads(1)
        rows = [(batch, "    ", None, None) for batch in (1, 16, 32)]
        if args.sweep_mib > 0:
            other = np.ones(args.sweep_mib << 20, dtype=np.uint8)
            sweep = lambda: other.sum(dtype=np.uint64)  # noqa: E731
            rows += [(1, "cold", sweep, 1000), (16, "cold", sweep, 200)]
        def cells(fp, kp):
            return "  ".join(f"{p if p == 'max' else f'p{p}'}: {fp[p]:8.1f} / {kp[p]:8.1f} = "
                             f"{fp[p] / kp[p]:4.2f}x" for p in fp)

        for batch, label, sweep, calls in rows:
            fp, kp = alternate(fx, kx, queries, batch, sweep, calls)
            print(f"{name:8} batch {batch:2} {label} faiss / knnblend  {cells(fp, kp)}")
            if batch == 1 and sweep is None:
                # The same number of calls of constant work as long as each engine's p50,
                # alternating the same way: the tail the machine alone gives such calls.
                mf, mk = alternate(ConstantWork(fp[50]), ConstantWork(kp[50]), queries, 1)
                print(f"{name:8} batch  1 machine faiss / knnblend  {cells(mf, mk)}")
        faiss.omp_set_num_threads(default_threads)
        idle = cpu_per_audio_second(None, queries, args.audio_seconds)
        cf = cpu_per_audio_second(fx, queries, args.audio_seconds)
        ck = cpu_per_audio_second(kx, queries, args.audio_seconds)
        net = (cf - idle) / max(ck - idle, 1e-9)
        print(f"{name:8} CPU per second of audio (paced, 16 frames per 160 ms): "
              f"faiss ({default_threads} threads) {cf * 1e3:.2f} ms, knnblend {ck * 1e3:.2f} ms "
              f"= {cf / ck:.2f}x; the pacing loop alone {idle * 1e3:.2f} ms, "
              f"searches alone {net:.2f}x")


if __name__ == "__main__":
    main()
