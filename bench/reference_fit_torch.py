"""The PyTorch reference ensembed's fit benchmark compares against: one training step of the
method written the way a PyTorch user would (float32 on the CPU, `nn.Linear` + `nn.ReLU` MLPs of
depth 2, one per backbone, the bank an `nn.Parameter`, `F.cosine_similarity` averaged over the
batch and the backbones, autograd, `torch.optim.Adam` over the MLPs and the whole bank, as the
paper's code does: every row of the bank moves at every step).

    python3 bench/reference_fit_torch.py --d 2048 --m 4 --batch 256 --threads 2

Prints one JSON line: seconds per step (median of the timed steps, after two warm-up steps)
and the torch version. `cargo bench -p ensembed --bench fit` runs it alongside ensembed's
`dense` bank (the same update semantics) when `import torch` works.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d, b = a.d, a.batch
    mlps = nn.ModuleList(
        nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU()) for _ in range(a.m)
    )
    feats = [F.normalize(torch.rand(a.n, d) ** 3, dim=1) for _ in range(a.m)]
    bank = nn.Parameter(F.normalize(sum(feats), dim=1))
    opt = torch.optim.Adam(list(mlps.parameters()) + [bank], lr=3e-4)
    times = []
    for t in range(a.steps + 2):
        idx = torch.randperm(a.n)[:b]
        start = time.perf_counter()
        x = bank[idx]
        loss = sum(1 - F.cosine_similarity(mlp(x), z[idx], dim=1).mean() for mlp, z in zip(mlps, feats)) / a.m
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if t >= 2:
            times.append(time.perf_counter() - start)
    times.sort()
    step = times[len(times) // 2]
    flops = a.m * 2 * b * d * d * 6  # 2 layers x (forward, weight grad, input grad)
    print(json.dumps({"step_seconds": step, "gflops": flops / step / 1e9, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
