from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

def shingle(text: str, fold: bytes, content: bytes, limit: int, /) -> tuple[bytearray, bytes]: ...
def similarities(sketch: bytes, others: Sequence[bytes], /) -> list[float]: ...
def scores(
    sketch: bytes, entries: bytes, key: int, owners: list[int] | None = None, /
) -> list[float]: ...
def merge(sample: bytes, hashes: npt.NDArray[np.uint32], /) -> tuple[bytes, int] | None: ...
def cycle_step(
    recent: bytes, runs: tuple[int, ...], key: int, sketch: bytes, similarity: float, /
) -> tuple[bytes, tuple[int, ...] | None]: ...
def near_step(
    recent: bytes,
    key: int,
    sketch: bytes,
    shingles: npt.NDArray[np.uint32] | memoryview,
    window: int,
    similarity: float,
    min_shingles: int,
    /,
) -> tuple[bytes, int, float] | None: ...
def progress_step(
    threshold: int,
    sample: bytes,
    recent: bytes,
    shingles: npt.NDArray[np.uint32] | memoryview,
    sample_size: int,
    completions: int,
    /,
) -> tuple[int, bytes, bytes, int, int] | None: ...
