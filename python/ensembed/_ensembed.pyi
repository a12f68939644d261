"""Type stub of the compiled module. Use the wrappers in ``ensembed`` instead: they check and
convert arguments (these functions expect float32 C-contiguous [n, d] arrays, int64 labels)."""

from typing import Any, Callable, List, Optional, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Progress = Union[bool, None, Callable[[str, int, int, str], Any]]
_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]

class RawModel:
    def train_representations(self) -> _F32: ...
    def record_json(self) -> str: ...
    def names(self) -> List[str]: ...
    def embed(
        self,
        feats: List[_F32],
        *,
        epochs: Optional[int] = None,
        lr: Optional[float] = None,
        bank: Optional[str] = None,
        batch: Optional[int] = None,
        threads: Optional[int] = None,
        progress: _Progress = None,
    ) -> _F32: ...
    def save(self, path: str, overwrite: bool = False) -> None: ...
    @staticmethod
    def load(path: str) -> "RawModel": ...

def fit(
    feats: List[_F32],
    names: List[str],
    *,
    epochs: Optional[int] = None,
    batch: Optional[int] = None,
    lr: Optional[float] = None,
    bank: Optional[str] = None,
    depth: Optional[int] = None,
    seed: Optional[int] = None,
    warmup: Optional[int] = None,
    lr_bank: Optional[float] = None,
    weight_decay: Optional[float] = None,
    dim: Optional[int] = None,
    hidden: Optional[int] = None,
    final_relu: Optional[bool] = None,
    last_bias: Optional[str] = None,
    source: Optional[str] = None,
    threads: Optional[int] = None,
    progress: _Progress = None,
) -> RawModel: ...
def knn(
    train: _F32,
    train_labels: _I64,
    test: _F32,
    test_labels: _I64,
    *,
    ks: List[int],
    t: float,
    vote: str,
    threads: Optional[int] = None,
    progress: _Progress = None,
) -> str: ...
def compare(
    train_feats: List[_F32],
    train_labels: _I64,
    test_feats: List[_F32],
    test_labels: _I64,
    names: List[str],
    *,
    ks: List[int],
    t: float,
    vote: str,
    model: Optional[RawModel] = None,
    epochs: Optional[int] = None,
    batch: Optional[int] = None,
    lr: Optional[float] = None,
    bank: Optional[str] = None,
    depth: Optional[int] = None,
    seed: Optional[int] = None,
    warmup: Optional[int] = None,
    lr_bank: Optional[float] = None,
    weight_decay: Optional[float] = None,
    dim: Optional[int] = None,
    hidden: Optional[int] = None,
    final_relu: Optional[bool] = None,
    last_bias: Optional[str] = None,
    threads: Optional[int] = None,
    progress: _Progress = None,
) -> str: ...
def average(feats: List[_F32], names: List[str], *, threads: Optional[int] = None) -> _F32: ...
def concat(feats: List[_F32], names: List[str], *, threads: Optional[int] = None) -> _F32: ...
