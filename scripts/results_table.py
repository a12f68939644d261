#!/usr/bin/env python3
"""Renders the README's result tables from the JSON files of scripts/run_experiments.sh.

    python3 scripts/results_table.py results/cifar10-mixed [results/cifar10-equal ...]

For each results folder (one backbone set on one dataset) it prints
  1. the headline table: every single backbone, their average and concatenation, and ours with
     each setting that was run, top-1 of the weighted k-NN vote at k = 20 and k = 200;
  2. every run of ours (all settings, not only the best) with its final training loss and
     the gap to the best baseline.
Baselines do not depend on the fit settings, so they are read from the `paper` run (and checked
to be identical across runs).
"""
import json
import sys
from pathlib import Path


def top1(method, k):
    for s in method["knn"]["scores"]:
        if s["k"] == k:
            return 100.0 * s["top1"]
    return float("nan")


def main(folders):
    for folder in map(Path, folders):
        runs = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
        if not runs:
            continue
        first = runs.get("paper") or next(iter(runs.values()))
        baselines = [m for m in first["methods"] if m["name"] != "ours"]
        for name, r in runs.items():
            for m in r["methods"]:
                if m["name"] == "ours":
                    continue
                ref = next(b for b in baselines if b["name"] == m["name"])
                if m["knn"]["scores"] != ref["knn"]["scores"]:
                    sys.exit(f"{folder}/{name}.json: baseline {m['name']} differs from the other runs")
        n_train = first["methods"][0]["knn"]["n_train"]
        n_test = first["methods"][0]["knn"]["n_test"]
        print(f"### {folder.name} ({n_train} train / {n_test} test)\n")
        print("| method | dim | top-1 k=20 | top-1 k=200 |")
        print("| --- | --- | --- | --- |")
        best20 = max(top1(b, 20) for b in baselines)
        best200 = max(top1(b, 200) for b in baselines)
        for b in baselines:
            print(f"| {b['name']} | {b['dim']} | {top1(b, 20):.2f} | {top1(b, 200):.2f} |")
        ours = {}
        for name, r in runs.items():
            o = next(m for m in r["methods"] if m["name"] == "ours")
            loss = r["fit_history"][-1]["loss"] if r.get("fit_history") else float("nan")
            ours[name] = (o, loss, r["config"]["fit"])
        for name in ("paper", "ensembed"):
            if name in ours:
                o = ours[name][0]
                print(f"| **ours ({name})** | {o['dim']} | **{top1(o, 20):.2f}** | **{top1(o, 200):.2f}** |")
        print(f"\nEvery run of ours (best baseline: {best20:.2f} at k=20, {best200:.2f} at k=200):\n")
        print("| setting | top-1 k=20 | vs best | top-1 k=200 | vs best | final loss |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, (o, loss, cfg) in sorted(ours.items(), key=lambda kv: -top1(kv[1][0], 20)):
            a, b = top1(o, 20), top1(o, 200)
            print(f"| {name} | {a:.2f} | {a - best20:+.2f} | {b:.2f} | {b - best200:+.2f} | {loss:.4f} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
