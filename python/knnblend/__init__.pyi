from os import PathLike
from typing import Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

METRIC_INNER_PRODUCT: int
METRIC_L2: int
MAX_K: int
MAX_NPROBE: int

class Index:
    @property
    def d(self) -> int: ...
    @property
    def ntotal(self) -> int: ...
    @property
    def nlist(self) -> int: ...
    @property
    def metric_type(self) -> int: ...
    @property
    def is_trained(self) -> bool: ...
    @property
    def index_type(self) -> str: ...
    nprobe: int
    def search(
        self,
        x: npt.ArrayLike,
        k: int,
        *,
        D: Optional[npt.NDArray[np.float32]] = ...,
        I: Optional[npt.NDArray[np.int64]] = ...,
    ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
    def blend(
        self,
        x: npt.ArrayLike,
        k: int = ...,
        ratio: float = ...,
        *,
        out: Optional[npt.NDArray[np.float32]] = ...,
    ) -> npt.NDArray[np.float32]: ...
    def reconstruct(self, key: int) -> npt.NDArray[np.float32]: ...
    def reconstruct_n(self, i0: int = ..., ni: Optional[int] = ...) -> npt.NDArray[np.float32]: ...

def read_index(path: Union[str, PathLike[str]]) -> Index: ...

class Ticket:
    @property
    def progress(self) -> Tuple[int, int]: ...
    @property
    def done(self) -> bool: ...
    def wait(self, timeout: Optional[float] = ...) -> Optional[dict]: ...

class Runtime:
    def __init__(self, slots: int = ..., max_dim: int = ..., crossfade_seconds: float = ...) -> None: ...
    def load(self, slot: int, path: Union[str, PathLike[str]]) -> Ticket: ...
    def unload(self, slot: int) -> None: ...
    def status(self, slot: int) -> dict: ...
    def telemetry(self) -> dict: ...
    def blend(
        self,
        x: npt.ArrayLike,
        slot: int = ...,
        k: int = ...,
        ratio: float = ...,
        *,
        out: Optional[npt.NDArray[np.float32]] = ...,
    ) -> npt.NDArray[np.float32]: ...
