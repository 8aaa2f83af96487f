"""knnblend: a faiss-compatible drop-in for RVC's realtime retrieval.

RVC's realtime step, with one changed import::

    import knnblend as faiss            # was: import faiss
    index = faiss.read_index("added_IVF769_Flat_nprobe_1_v2.index")
    score, ix = index.search(feats, k=8)

``read_index`` reads RVC/faiss IVF-Flat and IVF-PQ FastScan ``.index`` files and knnblend's
memory-mapped ``.kbi``. ``Index.search`` returns what faiss returns (float32 distances,
int64 ids, ``-1`` and faiss's sentinel distance where fewer than ``k`` neighbours exist);
``Index.blend`` is RVC's ``1/score²`` blend done in the library, never NaN. Both release the
GIL and spin no threads.
"""

from __future__ import annotations

import os

import numpy as np

from . import _knnblend

__all__ = ["Index", "Runtime", "Ticket", "read_index", "METRIC_L2", "METRIC_INNER_PRODUCT", "MAX_K", "MAX_NPROBE"]

#: faiss's metric codes (``Index.metric_type``).
METRIC_INNER_PRODUCT = 0
METRIC_L2 = 1
#: The largest ``k`` a search or blend takes.
MAX_K = _knnblend.MAX_K
#: The largest ``nprobe``.
MAX_NPROBE = _knnblend.MAX_NPROBE


def _queries(x, d: int) -> np.ndarray:
    """The queries as faiss's Python wrapper takes them: any real array of shape (n, d),
    converted to C-contiguous float32; a clear error for anything else."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"queries must be a real numeric array, not dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"queries must be 2-d (n, {d}), got shape {x.shape}")
    if x.shape[1] != d:
        raise ValueError(f"queries have {x.shape[1]} columns, the index has d = {d}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _out(a, shape, dtype, name: str) -> np.ndarray:
    """A caller-provided output array, which must match exactly (it is written in place)."""
    if a is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape:
        raise ValueError(f"{name} must be a {np.dtype(dtype).name} array of shape {shape}")
    if not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable")
    return a


class Index:
    """An index read by :func:`read_index`, with faiss's ``IndexIVF`` surface."""

    __slots__ = ("_ix",)

    def __init__(self, inner):
        self._ix = inner

    d = property(lambda self: self._ix.d, doc="Vector dimension.")
    ntotal = property(lambda self: self._ix.ntotal, doc="Number of stored vectors.")
    nlist = property(lambda self: self._ix.nlist, doc="Number of inverted lists.")
    metric_type = property(
        lambda self: self._ix.metric_type, doc="faiss's metric code: METRIC_L2 (1) or METRIC_INNER_PRODUCT (0)."
    )
    is_trained = property(lambda self: True, doc="Always True: a file that reads is trained.")
    index_type = property(lambda self: self._ix.index_type, doc="IVF-Flat, or the IVF-PQ factory string.")

    @property
    def nprobe(self) -> int:
        """Lists probed per query (the file's value at first; RVC uses 1)."""
        return self._ix.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._ix.nprobe = int(value)

    def search(self, x, k: int, *, D=None, I=None):
        """The ``k`` nearest stored vectors of each row of ``x``, as faiss returns them:
        ``(D, I)``, float32 distances (squared L2 ascending, or inner products descending)
        and int64 ids, both of shape ``(n, k)``; rows with fewer than ``k`` neighbours end
        with id ``-1`` and distance ``3.4028235e38`` (L2) or ``-3.4028235e38`` (IP).
        ``D``/``I`` may be given to be written in place.

        One difference from faiss, on purpose: the ``nprobe`` lists probed are the nearest
        *non-empty* ones. faiss probes an empty nearest list too and returns no neighbours
        (all ``-1``, so RVC's realtime step leaves that frame unblended); knnblend searches
        the nearest list that holds vectors. RVC's own indexes, trained and filled with the
        same frames, have no empty lists, and there the results are faiss's."""
        if D is None and I is None and type(k) is int and 0 < k <= MAX_K:
            # The common call (C-contiguous float32 rows of width d) in one native step.
            found = self._ix.search_new(x, k)
            if found is not None:
                return found
        k = _k(k)
        x = _queries(x, self.d)
        n = x.shape[0]
        D = _out(D, (n, k), np.float32, "D")
        I = _out(I, (n, k), np.int64, "I")
        if n:
            self._ix.search_into(x, k, D, I)
        return D, I

    def blend(self, x, k: int = 8, ratio: float = 0.75, *, out=None) -> np.ndarray:
        """RVC's retrieval blend of each row of ``x`` (float32 ``(n, d)``): its ``k``
        neighbours weighted ``1/score²`` (normalised), mixed with the row by ``ratio``
        (RVC's ``index_rate``). Exact matches and rows without neighbours never give NaN;
        rows holding NaN or inf are returned unchanged. ``out`` may be given."""
        k, ratio = _k(k), _ratio(ratio)
        x = _queries(x, self.d)
        out = _out(out, x.shape, np.float32, "out")
        if x.shape[0]:
            self._ix.blend_into(x, k, ratio, out)
        return out

    def reconstruct(self, key: int) -> np.ndarray:
        """The stored vector of id ``key`` (float32, shape ``(d,)``). An IVF-PQ FastScan
        index without ``RFlat`` gives its codes' decoding (plus the list centroid when the
        codes are residuals), as faiss defines it."""
        key = int(key)
        if not 0 <= key < self.ntotal:
            raise IndexError(f"id {key} is outside 0..{self.ntotal}")
        out = np.empty((1, self.d), dtype=np.float32)
        self._ix.reconstruct_into(key, out)
        return out[0]

    def reconstruct_n(self, i0: int = 0, ni: int | None = None) -> np.ndarray:
        """The stored vectors of ids ``i0 .. i0 + ni`` (float32, shape ``(ni, d)``), as
        RVC reads ``big_npy = index.reconstruct_n(0, index.ntotal)``."""
        i0 = int(i0)
        ni = self.ntotal - i0 if ni is None else int(ni)
        if i0 < 0 or ni < 0 or i0 + ni > self.ntotal:
            raise IndexError(f"ids {i0}..{i0 + ni} are outside 0..{self.ntotal}")
        out = np.empty((ni, self.d), dtype=np.float32)
        if ni:
            self._ix.reconstruct_into(i0, out)
        return out

    def __repr__(self) -> str:
        return repr(self._ix)


#: A background load (``Runtime.load``): ``progress`` (bytes done, total), ``done``, and
#: ``wait(timeout=None)`` → the published index's description, ``None`` when superseded,
#: ``ValueError`` with the library's message when the load failed (the old index serves on).
Ticket = _knnblend.Ticket


class Runtime:
    """The live runtime for host loops: indexes load into slots on the library's loader
    thread (with progress) while the current one keeps serving; ``blend`` serves one block of
    frames from a slot, and a new index in that slot, or another slot, crossfades over
    ``crossfade_seconds``; replaced indexes are released off the calling thread."""

    __slots__ = ("_rt",)

    def __init__(self, slots: int = 8, max_dim: int = 1024, crossfade_seconds: float = 0.05):
        self._rt = _knnblend.Runtime(int(slots), int(max_dim), float(crossfade_seconds))

    def load(self, slot: int, path) -> Ticket:
        """Starts loading ``path`` (``.index`` or ``.kbi``) into ``slot``; returns at once."""
        return self._rt.load(int(slot), os.fspath(path))

    def unload(self, slot: int) -> None:
        """Empties ``slot``."""
        self._rt.unload(int(slot))

    def status(self, slot: int) -> dict:
        """``{"state": "empty"|"loading"|"ready"|"failed", "progress"?, "error"?, "index"}``."""
        return self._rt.status(int(slot))

    def telemetry(self) -> dict:
        """Queries, per-query and per-block times (ns), the serving index, crossfading."""
        return self._rt.telemetry()

    def blend(self, x, slot: int = 0, k: int = 8, ratio: float = 0.75, *, out=None) -> np.ndarray:
        """RVC's blend of a block of frames ``(n, d)`` against ``slot``'s index (frames are
        copied while nothing of their dimension serves). The GIL is released."""
        k, ratio = _k(k), _ratio(ratio)
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"frames must be 2-d (n, d), got shape {x.shape}")
        x = _queries(x, x.shape[1])
        out = _out(out, x.shape, np.float32, "out")
        if x.shape[0]:
            self._rt.blend_into(x, int(slot), k, ratio, out)
        return out


def _k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, not {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k = {k} is outside 1..={MAX_K}")
    return k


def _ratio(ratio) -> float:
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio = {ratio} is outside [0, 1]")
    return ratio


def read_index(path) -> Index:
    """Reads an RVC/faiss ``.index`` (IVF-Flat, or IVF-PQ FastScan ``IVF…,PQ…x4fs[,RFlat]``)
    or a knnblend ``.kbi``. Raises ``OSError`` for a missing file and ``ValueError`` with the
    library's message for anything it cannot serve (corrupt, unsupported type, no vectors)."""
    return Index(_knnblend.read_index(os.fspath(path)))
