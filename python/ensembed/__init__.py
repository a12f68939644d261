"""ensembed: one nearest-neighbour representation per sample, learned from an ensemble of
pretrained backbones (Wallace et al., "Learning Rich Nearest Neighbor Representations from
Self-supervised Ensembles"). Python bindings of the Rust library; the same computation as the
``ensembed`` command-line tool, bit for bit, for the same data, seed and thread count.

Shapes: ``n`` samples, ``m`` backbones, backbone ``j`` gives ``[n, d_j]`` features; the learned
representation has ``dim`` columns (default: the largest ``d_j``).

Features are passed as a list of ``[n, d_j]`` arrays (named ``b0, b1, ...`` unless ``names`` is
given) or as a dict ``{name: array}``. float32 C-contiguous arrays are used in place (no copy);
float16, float64 and non-contiguous arrays are converted to float32 once. Rows are
L2-normalised by the library as it reads them; NaN, infinity and all-zero rows are rejected.

Long calls release the GIL, run on ``threads`` worker threads (default: ``RAYON_NUM_THREADS``,
else every core), can show a progress bar (``progress=True``) or call
``progress(stage, done, total, message)``, and stop on Ctrl-C with ``KeyboardInterrupt``.

Example::

    import numpy as np, ensembed
    train, test = np.load("data/demo/train.npz"), np.load("data/demo/test.npz")
    names = ["mnv2-imagenet", "mnv2-tf2-imagenet", "mnv2-inat-bird"]
    model = ensembed.fit({n: train[n] for n in names}, epochs=10)
    z_test = model.embed({n: test[n] for n in names})
    ensembed.knn(model.train_representations, train["labels"], z_test, test["labels"], k=20)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _ensembed
from ._ensembed import __version__

__all__ = ["Model", "fit", "load", "knn", "compare", "baselines", "__version__"]

ProgressArg = Union[bool, None, Callable[[str, int, int, str], Any]]

# ------------------------------------------------------------------------------------------
# Argument checking: everything the Rust side gets is float32 C-contiguous 2-D or int64 1-D.


def _as_matrix(a: Any, what: str) -> np.ndarray:
    """``a`` as a C-contiguous float32 ``[n, d]`` array: itself when it already is one (no
    copy), else converted once. Raises TypeError for non-float data, ValueError for bad shapes."""
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{what}: cannot be read as a numpy array: {e}") from None
    if a.dtype.kind != "f":
        raise TypeError(
            f"{what}: expected floating-point features (float32, float16 or float64), "
            f"got dtype {a.dtype} with shape {a.shape}"
        )
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array [n, d], got {a.ndim}-D with shape {a.shape} ({a.dtype})")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{what}: expected a non-empty [n, d] array, got shape {a.shape}")
    if a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.ascontiguousarray(a, dtype=np.float32)


def _as_labels(y: Any, what: str) -> np.ndarray:
    """Class labels as a C-contiguous int64 ``[n]`` array of values >= 0."""
    if not isinstance(y, np.ndarray):
        y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"{what}: expected integer class labels, got dtype {y.dtype} with shape {y.shape}")
    if y.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array [n], got shape {y.shape}")
    if y.size and y.min() < 0:
        i = int(np.argmin(y))
        raise ValueError(f"{what}: label {y[i]} at index {i} is negative (labels are class indices 0, 1, ...)")
    if y.dtype.kind == "u" and y.size and y.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{what}: label {y.max()} is too large")
    return np.ascontiguousarray(y, dtype=np.int64)


def _as_features(feats: Any, what: str, names: Optional[Sequence[str]] = None) -> Tuple[List[np.ndarray], List[str]]:
    """(arrays, names) from a list/tuple of arrays, a dict ``{name: array}`` or one 2-D array."""
    if isinstance(feats, Mapping):
        if names is not None:
            raise ValueError(f"{what}: give names either as the dict's keys or as `names`, not both")
        names = [str(k) for k in feats.keys()]
        arrays = list(feats.values())
    elif isinstance(feats, np.ndarray):
        if feats.ndim != 2:
            raise ValueError(
                f"{what}: expected a list of 2-D [n, d_j] arrays (or one 2-D array), "
                f"got one {feats.ndim}-D array with shape {feats.shape} ({feats.dtype})"
            )
        arrays = [feats]
    elif isinstance(feats, (list, tuple)):
        arrays = list(feats)
    else:
        raise TypeError(f"{what}: expected a list of [n, d_j] arrays or a dict {{name: array}}, got {type(feats).__name__}")
    if not arrays:
        raise ValueError(f"{what}: at least one backbone is needed")
    if names is None:
        names = [f"b{j}" for j in range(len(arrays))]
    else:
        names = [str(n) for n in names]
        if len(names) != len(arrays):
            raise ValueError(f"{what}: {len(arrays)} arrays but {len(names)} names")
    mats = [_as_matrix(a, f"{what}[{j}] ({names[j]!r})") for j, a in enumerate(arrays)]
    n0 = mats[0].shape[0]
    for j, m in enumerate(mats):
        if m.shape[0] != n0:
            raise ValueError(
                f"{what}: every backbone needs the same number of rows: "
                f"{what}[0] ({names[0]!r}) has {n0}, {what}[{j}] ({names[j]!r}) has {m.shape[0]}"
            )
    return mats, names


def _int(v: Any, what: str, minimum: int = 0, optional: bool = False) -> Optional[int]:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{what}: expected an integer, got {v!r}")
    if v < minimum:
        raise ValueError(f"{what}: must be at least {minimum}, got {v}")
    return int(v)


def _float(v: Any, what: str, optional: bool = False) -> Optional[float]:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what}: expected a number, got {v!r}")
    return float(v)


def _choice(v: Any, what: str, allowed: Sequence[str], optional: bool = False) -> Optional[str]:
    if v is None and optional:
        return None
    if not isinstance(v, str) or v.lower() not in allowed:
        raise ValueError(f"{what}: expected one of {', '.join(map(repr, allowed))}, got {v!r}")
    return v.lower()


def _ks(k: Union[int, Sequence[int]]) -> List[int]:
    ks = [k] if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else list(k)
    if not ks:
        raise ValueError("k: give at least one k")
    return [_int(x, "k", 1) for x in ks]


def _fit_kwargs(**kw: Any) -> Dict[str, Any]:
    """Fit settings checked for type; None means "the default" (or the model's, in compare)."""
    out = {
        "epochs": _int(kw["epochs"], "epochs", 1, True),
        "batch": _int(kw["batch"], "batch", 1, True),
        "lr": _float(kw["lr"], "lr", True),
        "bank": _choice(kw["bank"], "bank", ("dense", "lazy"), True),
        "depth": _int(kw["depth"], "depth", 1, True),
        "seed": _int(kw["seed"], "seed", 0, True),
        "warmup": _int(kw["warmup"], "warmup", 0, True),
        "lr_bank": _float(kw["lr_bank"], "lr_bank", True),
        "weight_decay": _float(kw["weight_decay"], "weight_decay", True),
        "dim": _int(kw["dim"], "dim", 1, True),
        "hidden": _int(kw["hidden"], "hidden", 1, True),
        "final_relu": None if kw["final_relu"] is None else bool(kw["final_relu"]),
        "last_bias": _choice(kw["last_bias"], "last_bias", ("torch", "zero"), True),
    }
    return out


def _threads(threads: Optional[int]) -> Optional[int]:
    return _int(threads, "threads", 1, True)


# ------------------------------------------------------------------------------------------
# Model


class Model:
    """A fitted ensembed model: one MLP per backbone, the learned training representations and
    the settings and loss curve of the fit. The same content as an ``ensembed fit`` model
    directory (:meth:`save` writes one, :func:`load` reads one)."""

    def __init__(self, raw: "_ensembed.RawModel") -> None:
        self._raw = raw
        self._record: Dict[str, Any] = json.loads(raw.record_json())

    @property
    def train_representations(self) -> np.ndarray:
        """Learned training representations, ``[n, dim]`` float32: a read-only view of the
        model's buffer (no copy). ``np.array(...)`` it for a writable copy. Rows are not
        normalised (k-NN normalises them)."""
        return self._raw.train_representations()

    @property
    def history(self) -> List[Dict[str, Any]]:
        """One dict per training epoch: ``epoch``, ``loss`` (mean 1 - cos) and
        ``bank_learning`` (False during warm-up)."""
        return [dict(h) for h in self._record["history"]]

    @property
    def config(self) -> Dict[str, Any]:
        """The resolved training settings (the ``config`` of ``fit.json``)."""
        return dict(self._record["config"])

    @property
    def spec(self) -> Dict[str, Any]:
        """The model's shape: ``backbones`` [{name, dim}], ``dim``, ``hidden``, ``depth``,
        ``final_relu``."""
        return json.loads(json.dumps(self._record["spec"]))

    @property
    def names(self) -> List[str]:
        """Backbone names, in the model's order."""
        return [b["name"] for b in self._record["spec"]["backbones"]]

    @property
    def dim(self) -> int:
        """Representation dimension."""
        return int(self._record["spec"]["dim"])

    @property
    def threads(self) -> int:
        """Worker threads the fit ran on (outputs are identical for the same data, seed and
        thread count)."""
        return int(self._record["threads"])

    def embed(
        self,
        feats: Union[Sequence[Any], Mapping[str, Any]],
        epochs: Optional[int] = None,
        lr: Optional[float] = None,
        bank: Optional[str] = None,
        batch: Optional[int] = None,
        *,
        threads: Optional[int] = None,
        progress: ProgressArg = False,
    ) -> np.ndarray:
        """Representations of new samples through the frozen MLPs (``ensembed embed``).

        feats: the model's backbones, ``[n, d_j]`` each: a list in the model's order
            (:attr:`names`) or a dict keyed by backbone name (any order).
        epochs, lr, bank, batch: inference settings; None takes the training run's.
        Returns ``[n, dim]`` float32 (a new array that owns the library's buffer).
        """
        if isinstance(feats, Mapping):
            missing = [n for n in self.names if n not in feats]
            extra = [k for k in feats if k not in self.names]
            if missing or extra:
                raise ValueError(f"feats: the model's backbones are {self.names}; missing {missing}, unknown {extra}")
            feats = [feats[n] for n in self.names]
        elif isinstance(feats, np.ndarray) and feats.ndim == 2:
            feats = [feats]
        if not isinstance(feats, (list, tuple)):
            raise TypeError(f"feats: expected a list of [n, d_j] arrays or a dict {{name: array}}, got {type(feats).__name__}")
        if len(feats) != len(self.names):
            raise ValueError(f"feats: the model has {len(self.names)} backbones ({', '.join(self.names)}), got {len(feats)} arrays")
        mats, _ = _as_features(list(feats), "feats", self.names)
        return self._raw.embed(
            mats,
            epochs=_int(epochs, "epochs", 1, True),
            lr=_float(lr, "lr", True),
            bank=_choice(bank, "bank", ("dense", "lazy"), True),
            batch=_int(batch, "batch", 1, True),
            threads=_threads(threads),
            progress=progress,
        )

    def save(self, path: Union[str, os.PathLike], overwrite: bool = False) -> None:
        """Writes the model directory ``path`` (``model.safetensors``, ``fit.json``,
        ``train_repr.safetensors``), exactly as ``ensembed fit --out path`` does; the CLI's
        ``embed``, ``export`` and ``compare --model`` read it. Raises FileExistsError when
        ``path`` exists unless ``overwrite``."""
        self._raw.save(os.fspath(path), bool(overwrite))

    def __repr__(self) -> str:
        backbones = ", ".join(f"{b['name']}[{b['dim']}]" for b in self._record["spec"]["backbones"])
        return f"<ensembed.Model n={self._record['n']} dim={self.dim} backbones=({backbones})>"


def fit(
    feats: Union[Sequence[Any], Mapping[str, Any]],
    names: Optional[Sequence[str]] = None,
    epochs: int = 50,
    batch: int = 256,
    lr: float = 3e-4,
    bank: str = "dense",
    depth: int = 2,
    seed: int = 0,
    warmup: Optional[int] = None,
    lr_bank: Optional[float] = None,
    weight_decay: float = 0.0,
    dim: Optional[int] = None,
    hidden: Optional[int] = None,
    final_relu: bool = True,
    last_bias: str = "torch",
    *,
    threads: Optional[int] = None,
    progress: ProgressArg = False,
) -> Model:
    """Fits one MLP per backbone and the training representations (``ensembed fit``).

    feats: ``[n, d_j]`` features of the training samples, one array per backbone (a list, named
        by ``names`` or ``b0, b1, ...``; or a dict ``{name: array}``).
    epochs, batch, lr: passes over the data, samples per Adam step, learning rate of the MLPs.
    bank: ``"dense"`` (every step moves every representation, as in the paper's PyTorch code)
        or ``"lazy"`` (only the batch's rows move).
    depth: linear layers per MLP (1..8). hidden: their width (default ``dim``).
    dim: representation dimension (default: the largest ``d_j``).
    warmup: epochs in which only the MLPs learn (default ``epochs // 2``).
    lr_bank: learning rate of the representations (default ``lr``).
    weight_decay: L2 penalty on the MLPs. final_relu: ReLU after the last layer.
    last_bias: ``"torch"`` or ``"zero"`` initialisation of the last layer's bias.
    threads: worker threads; progress: True for a bar on stderr, or a callable
        ``progress(stage, done, total, message)``.
    Returns a :class:`Model`; ``model.train_representations`` is ``[n, dim]`` float32.
    """
    mats, names = _as_features(feats, "feats", names)
    kw = _fit_kwargs(
        epochs=epochs, batch=batch, lr=lr, bank=bank, depth=depth, seed=seed, warmup=warmup, lr_bank=lr_bank,
        weight_decay=weight_decay, dim=dim, hidden=hidden, final_relu=final_relu, last_bias=last_bias,
    )
    raw = _ensembed.fit(mats, names, **kw, threads=_threads(threads), progress=progress)
    return Model(raw)


def load(path: Union[str, os.PathLike]) -> Model:
    """Reads a model directory written by ``ensembed fit`` or :meth:`Model.save`."""
    return Model(_ensembed.RawModel.load(os.fspath(path)))


# ------------------------------------------------------------------------------------------
# Evaluation


def knn(
    train: Any,
    train_labels: Any,
    test: Any,
    test_labels: Any,
    k: Union[int, Sequence[int]] = 20,
    t: float = 0.07,
    vote: str = "weighted",
    *,
    threads: Optional[int] = None,
    progress: ProgressArg = False,
) -> Dict[int, Dict[str, float]]:
    """k-NN classification accuracy of ``test`` against ``train`` (``ensembed knn``): cosine
    similarity, exact search, votes weighted by ``exp(s / t)`` (or one each with
    ``vote="majority"``).

    train: ``[n_train, d]``; train_labels: ``[n_train]`` integer classes >= 0;
    test: ``[n_test, d]``; test_labels: ``[n_test]``. Rows are L2-normalised on a copy (the
    inputs are not modified). k: one k or a list, each <= n_train, all from one search.
    Returns ``{k: {"top1": fraction, "top5": fraction}}``.
    """
    a = _as_matrix(train, "train")
    b = _as_matrix(test, "test")
    ya = _as_labels(train_labels, "train_labels")
    yb = _as_labels(test_labels, "test_labels")
    report = json.loads(
        _ensembed.knn(
            a, ya, b, yb, ks=_ks(k), t=_float(t, "t"), vote=_choice(vote, "vote", ("weighted", "majority")),
            threads=_threads(threads), progress=progress,
        )
    )
    return {int(s["k"]): {"top1": s["top1"], "top5": s["top5"]} for s in report["scores"]}


def compare(
    train_feats: Union[Sequence[Any], Mapping[str, Any]],
    train_labels: Any,
    test_feats: Union[Sequence[Any], Mapping[str, Any]],
    test_labels: Any,
    names: Optional[Sequence[str]] = None,
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
    k: Union[int, Sequence[int]] = (10, 20, 100, 200),
    t: float = 0.07,
    vote: str = "weighted",
    model: Optional[Model] = None,
    *,
    threads: Optional[int] = None,
    progress: ProgressArg = False,
) -> Dict[str, Any]:
    """The paper's comparison in one call (``ensembed compare --json``): every backbone, the
    average, the concatenation and the learned representations (``ours``), scored by k-NN.

    train_feats / test_feats: the same backbones, ``[n_train, d_j]`` / ``[n_test, d_j]``
    (lists in the same order, or dicts with the same keys). train_labels / test_labels: integer
    classes. Fit settings as in :func:`fit`; None means METHOD.md's default, or with ``model``
    (transfer: its MLPs are used as they are, nothing is fitted) the model's setting.

    Returns the CLI's JSON as a dict: ``k`` (the headline k, 20), ``knn_top1`` and ``knn_top5``
    (``{method: fraction or None}`` for each backbone name, ``average``, ``concat`` and
    ``ours``), ``methods`` (per-k results), ``skipped``, ``fit_history``, ``embed_history`` and
    ``config``.
    """
    if isinstance(train_feats, Mapping) and isinstance(test_feats, Mapping):
        if list(train_feats) != list(test_feats):
            if set(train_feats) != set(test_feats):
                raise ValueError(f"test_feats: backbones {list(test_feats)} differ from train_feats' {list(train_feats)}")
            test_feats = {n: test_feats[n] for n in train_feats}
    a, names_a = _as_features(train_feats, "train_feats", names)
    b, names_b = _as_features(test_feats, "test_feats", names)
    if names_a != names_b:
        raise ValueError(f"test_feats: backbones {names_b} differ from train_feats' {names_a}")
    for j, (x, y) in enumerate(zip(a, b)):
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"test_feats[{j}] ({names_a[j]!r}): {y.shape[1]} columns, but train_feats[{j}] has {x.shape[1]}")
    if model is not None and not isinstance(model, Model):
        raise TypeError(f"model: expected an ensembed.Model, got {type(model).__name__}")
    kw = _fit_kwargs(
        epochs=epochs, batch=batch, lr=lr, bank=bank, depth=depth, seed=seed, warmup=warmup, lr_bank=lr_bank,
        weight_decay=weight_decay, dim=dim, hidden=hidden, final_relu=final_relu, last_bias=last_bias,
    )
    out = _ensembed.compare(
        a, _as_labels(train_labels, "train_labels"), b, _as_labels(test_labels, "test_labels"), names_a,
        ks=_ks(k), t=_float(t, "t"), vote=_choice(vote, "vote", ("weighted", "majority")),
        model=None if model is None else model._raw, **kw, threads=_threads(threads), progress=progress,
    )
    return json.loads(out)


from . import baselines  # noqa: E402  (uses the helpers above)
