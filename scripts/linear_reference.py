#!/usr/bin/env python3
"""Independent reference for the linear probe's solver (crates/ensembed/src/eval/linear.rs).

Fits L2-regularised multinomial logistic regression
    f(W, b) = mean_i [logsumexp(x_i W + b) - (x_i W + b)_{y_i}] + wd/2 ||W||^2   (b unpenalised)
with scipy's L-BFGS-B run far past any practical tolerance (falling back to plain gradient
descent when scipy is missing), in float64, on a small dataset defined by closed-form formulas
so that the Rust test (tests/it/linear.rs) builds exactly the same numbers without an RNG:

    n = 60, d = 5, c = 3, rows i = 0..n, columns j = 0..d
    a_ij = sin(1.7 i + 0.3 j) + 0.5 cos(0.9 i j + j)          (float64)
    x_i  = a_i / ||a_i||, then rounded to float32                (the features the solver sees)
    s_ik = x_ik + 0.3 sin(2.9 i + 1.3 k), k = 0..c  (x in float64, before rounding)
    y_i  = argmax_k s_ik
    weight decays 1e-2 and 1e-3, each rounded to float32 first (as the Rust config holds them)

The bias is only defined up to a common constant (softmax ignores one), so it is printed with
its mean removed. Prints, for each weight decay: the objective at the optimum, the largest
gradient entry there (the convergence evidence), W (d rows of c) and the centred b.

Usage (from the repository root):  python3 scripts/linear_reference.py
"""

import math

import numpy as np

N, D, C = 60, 5, 3
# As float32 (what the Rust config holds: f32(1e-3) is 1e-3 + 4.7e-11, which moves the optimal
# objective by 1.5e-9 here, far above the solvers' agreement).
WEIGHT_DECAYS = tuple(float(np.float32(v)) for v in (1e-2, 1e-3))


def dataset():
    # math.sin/cos (the C library's, as Rust's f64::sin) rather than numpy's vectorised ones,
    # which may differ in the last bit and so, after rounding to float32, in a few features.
    a = np.array([[math.sin(1.7 * i + 0.3 * j) + 0.5 * math.cos(0.9 * i * j + j) for j in range(D)]
                  for i in range(N)])
    x64 = a / np.sqrt((a * a).sum(axis=1, keepdims=True))
    s = np.array([[x64[i, k] + 0.3 * math.sin(2.9 * i + 1.3 * k) for k in range(C)] for i in range(N)])
    y = np.argmax(s, axis=1)
    srt = np.sort(s, axis=1)
    margin = float(np.min(srt[:, -1] - srt[:, -2]))  # how far the labels are from a tie
    return x64.astype(np.float32).astype(np.float64), y, margin


def objective(theta, x, y, wd):
    w, b = theta[: D * C].reshape(D, C), theta[D * C:]
    z = x @ w + b
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    f = np.mean(m[:, 0] + np.log(s[:, 0]) - z[np.arange(N), y]) + 0.5 * wd * np.sum(w * w)
    r = e / s
    r[np.arange(N), y] -= 1.0
    gw = x.T @ r / N + wd * w
    gb = r.sum(axis=0) / N
    return f, np.concatenate([gw.ravel(), gb])


def fit(x, y, wd):
    theta = np.zeros(D * C + C)
    try:
        from scipy.optimize import minimize

        res = minimize(objective, theta, args=(x, y, wd), jac=True, method="L-BFGS-B",
                       options={"maxiter": 100000, "gtol": 1e-14, "ftol": 1e-16, "maxcor": 30})
        theta = res.x
    except ImportError:
        # Plain gradient descent: the objective's curvature is at most ~1 + wd here (unit rows),
        # so a step of 0.5 is stable; run until the gradient is at round-off.
        for _ in range(2_000_000):
            f, g = objective(theta, x, y, wd)
            if np.max(np.abs(g)) < 1e-13:
                break
            theta -= 0.5 * g
    return theta


def main():
    x, y, margin = dataset()
    print(f"labels per class {np.bincount(y, minlength=C).tolist()}, smallest label margin {margin:.3e}")
    for wd in WEIGHT_DECAYS:
        theta = fit(x, y, wd)
        f, g = objective(theta, x, y, wd)
        w, b = theta[: D * C].reshape(D, C), theta[D * C:]
        b = b - b.mean()
        print(f"wd {np.float32(wd)}: objective {f:.12f}, max |gradient| {np.max(np.abs(g)):.2e}")
        print("  W = [" + ", ".join(f"{v:.8f}" for v in w.ravel()) + "]")
        print("  b = [" + ", ".join(f"{v:.8f}" for v in b) + "]")


if __name__ == "__main__":
    main()
