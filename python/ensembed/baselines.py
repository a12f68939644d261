"""The representations the paper compares against, built from L2-normalised backbone features
(the same code as ``ensembed export --baseline``)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from . import _ensembed
from . import _as_features, _threads

__all__ = ["average", "concat"]


def average(
    feats: Union[Sequence[Any], Mapping[str, Any]],
    names: Optional[Sequence[str]] = None,
    *,
    threads: Optional[int] = None,
) -> np.ndarray:
    """``normalise(sum_j normalise(z_j))``: ``feats`` are ``[n, d]`` arrays of one width d.
    Returns ``[n, d]`` float32 with unit rows. ValueError when the widths differ."""
    mats, names = _as_features(feats, "feats", names)
    return _ensembed.average(mats, names, threads=_threads(threads))


def concat(
    feats: Union[Sequence[Any], Mapping[str, Any]],
    names: Optional[Sequence[str]] = None,
    *,
    threads: Optional[int] = None,
) -> np.ndarray:
    """``normalise([normalise(z_1); ...; normalise(z_m)])``: ``feats`` are ``[n, d_j]`` arrays.
    Returns ``[n, sum_j d_j]`` float32 with unit rows."""
    mats, names = _as_features(feats, "feats", names)
    return _ensembed.concat(mats, names, threads=_threads(threads))
