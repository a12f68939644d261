"""The reference ensembed's fit benchmark compares against: one training step of the method
written the way a numpy user would (float32, BLAS matmuls, the same shapes and arithmetic as
ensembed: m MLPs of depth 2 with ReLU after every layer, mean cosine loss, Adam on the MLPs and
on the batch's rows of the memory bank).

    python3 bench/reference_fit.py --d 2048 --m 4 --batch 256 --steps 6

Prints one JSON line: seconds per step (median of the timed steps, after one warm-up step).
On machines that set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for old OpenBLAS builds, unset both
for this command to let a current numpy pick its fastest kernel:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 bench/reference_fit.py
"""
import argparse
import json
import time

import numpy as np


def adam(p, g, state, t, lr=3e-4, b1=0.9, b2=0.999, eps=1e-8):
    m, v = state
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    p -= (lr / (1 - b1 ** t)) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    d, b = a.d, a.batch
    bound = 1 / np.sqrt(d)
    # PyTorch layout: W [out, in], y = x @ W.T + c
    weights = [[rng.uniform(-bound, bound, (d, d)).astype(np.float32) for _ in range(2)] for _ in range(a.m)]
    biases = [[rng.uniform(-bound, bound, d).astype(np.float32) for _ in range(2)] for _ in range(a.m)]
    wstate = [[(np.zeros_like(w), np.zeros_like(w)) for w in ws] for ws in weights]
    bstate = [[(np.zeros_like(x), np.zeros_like(x)) for x in bs] for bs in biases]
    feats = [rng.random((a.n, d), dtype=np.float32) ** 3 for _ in range(a.m)]
    feats = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in feats]
    bank = sum(feats)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    bank_m, bank_v = np.zeros_like(bank), np.zeros_like(bank)
    times = []
    for t in range(1, a.steps + 2):
        idx = rng.choice(a.n, b, replace=False)
        start = time.perf_counter()
        x = bank[idx]
        dx = np.zeros_like(x)
        for j in range(a.m):
            (w1, w2), (c1, c2), z = weights[j], biases[j], feats[j][idx]
            h = np.maximum(x @ w1.T + c1, 0)
            o = np.maximum(h @ w2.T + c2, 0)
            no = np.maximum(np.linalg.norm(o, axis=1, keepdims=True), 1e-8)
            cos = np.sum(o * z, axis=1, keepdims=True) / no
            go = -(z / no - cos * o / no**2) / (b * a.m)
            go *= o > 0
            gw2, gc2 = go.T @ h, go.sum(0)
            gh = (go @ w2) * (h > 0)
            gw1, gc1 = gh.T @ x, gh.sum(0)
            dx += gh @ w1
            for p, g, s in ((w1, gw1, wstate[j][0]), (w2, gw2, wstate[j][1]), (c1, gc1, bstate[j][0]), (c2, gc2, bstate[j][1])):
                adam(p, g, s, t)
        rows = bank[idx]
        mrow, vrow = bank_m[idx], bank_v[idx]
        adam(rows, dx, (mrow, vrow), t)
        bank[idx], bank_m[idx], bank_v[idx] = rows, mrow, vrow
        if t > 1:
            times.append(time.perf_counter() - start)
    step = float(np.median(times))
    flops = a.m * 2 * b * d * d * 6  # 2 layers x (forward, weight grad, input grad)
    print(json.dumps({"step_seconds": step, "gflops": flops / step / 1e9, "numpy": np.__version__}))


if __name__ == "__main__":
    main()
