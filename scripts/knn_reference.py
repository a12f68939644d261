#!/usr/bin/env python3
"""Independent numpy reference of the weighted k-NN protocol (DINO's eval_knn).

For each method -- every backbone alone, `average` = normalise(sum_j normalise(z_j)),
`concat` = normalise([normalise(z_1), ..., normalise(z_m)]) -- features are converted to
float64 and L2-normalised; cosine similarities test x train are computed; the top-k train
neighbours are taken (ties in similarity -> lower train index first); each neighbour votes
for its class with weight exp(sim / T), T = 0.07; the class vote sums are ranked
(descending, ties -> lower class index).  top-1 = rank-1 class is the true label; top-5 =
true label among the 5 highest-ranked classes.  Accuracies are fractions.

Also: majority vote (weight 1) at k = 20.

JSON (--json, and what data/demo/knn_reference.json holds):
  {method: {"<k>": {"top1": f, "top5": f}, ...}, ...,
   "majority": {method: {"20": {"top1": f, "top5": f}}, ...}}
Backbone methods come in the npz's array order, then "average", then "concat".

Usage (from the repository root):
  python3 scripts/knn_reference.py                      # table
  python3 scripts/knn_reference.py --json > data/demo/knn_reference.json
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
KS = (10, 20, 100, 200)
MAJORITY_K = 20
T = 0.07


def normalise(x):
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def load(path):
    with np.load(path) as z:
        labels = z["labels"].astype(np.int64)
        feats = {k: z[k].astype(np.float64) for k in z.files if k != "labels"}
    return feats, labels


def methods(feats, names):
    out = {n: normalise(feats[n]) for n in names}
    normed = [out[n] for n in names]
    out["average"] = normalise(np.sum(normed, axis=0))
    out["concat"] = normalise(np.concatenate(normed, axis=1))
    return out


def knn(train, train_y, test, test_y, k, n_classes, weighted=True):
    sim = test @ train.T  # both unit-norm -> cosine
    # top-k by descending similarity; stable sort so ties keep the lower train index
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(sim, idx, axis=1)
    w = np.exp(s / T) if weighted else np.ones_like(s)
    votes = np.zeros((len(test), n_classes))
    np.add.at(votes, (np.arange(len(test))[:, None], train_y[idx]), w)
    rank = np.argsort(-votes, axis=1, kind="stable")  # ties -> lower class index
    top1 = float(np.mean(rank[:, 0] == test_y))
    top5 = float(np.mean((rank[:, :5] == test_y[:, None]).any(axis=1)))
    return top1, top5


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, default=REPO_ROOT / "data/demo/train.npz")
    ap.add_argument("--test", type=Path, default=REPO_ROOT / "data/demo/test.npz")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()

    tr, tr_y = load(args.train)
    te, te_y = load(args.test)
    names = list(tr.keys())
    assert names == list(te.keys()), "train/test backbones differ"
    n_classes = int(max(tr_y.max(), te_y.max())) + 1
    mtr, mte = methods(tr, names), methods(te, names)

    res, maj = {}, {}
    for m in mtr:
        res[m] = {}
        for k in KS:
            if k > len(tr_y):
                continue
            t1, t5 = knn(mtr[m], tr_y, mte[m], te_y, k, n_classes)
            res[m][str(k)] = {"top1": t1, "top5": t5}
        t1, t5 = knn(mtr[m], tr_y, mte[m], te_y, MAJORITY_K, n_classes, weighted=False)
        maj[m] = {str(MAJORITY_K): {"top1": t1, "top5": t5}}

    if args.json:
        json.dump({**res, "majority": maj}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return

    print(f"weighted k-NN (T={T}), train {len(tr_y)}, test {len(te_y)}, "
          f"{n_classes} classes; top1 / top5 in %")
    w = max(len(m) for m in res)
    print(f"{'method':<{w}}  " + "  ".join(f"{'k=' + str(k):>13}" for k in KS)
          + f"  {'maj k=' + str(MAJORITY_K):>10}")
    for m, r in res.items():
        cells = "  ".join(f"{100 * r[str(k)]['top1']:5.1f} / {100 * r[str(k)]['top5']:5.1f}"
                          for k in KS if str(k) in r)
        print(f"{m:<{w}}  {cells}  {100 * maj[m][str(MAJORITY_K)]['top1']:10.1f}")


if __name__ == "__main__":
    main()
