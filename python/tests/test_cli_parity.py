"""The Python package computes exactly what the CLI computes: same data (written to .npy from
Python and imported by `ensembed import`), same seed, same thread count -> byte-identical
training representations, embeddings and comparison JSON."""

import json
import subprocess

import numpy as np
import pytest

import ensembed

THREADS = 2


def run(cli, *args):
    cmd = [cli, "--threads", str(THREADS), "--quiet", *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stderr}"
    return p.stdout


def make_store(cli, tmp, name, feats, labels):
    args = []
    for n, a in feats.items():
        path = tmp / f"{name}-{n}.npy"
        np.save(path, a)
        args += ["--backbone", f"{n}={path}"]
    np.save(tmp / f"{name}-labels.npy", labels)
    store = tmp / f"{name}-store"
    run(cli, "import", "--out", store, *args, "--labels", tmp / f"{name}-labels.npy")
    return store


# (name, feature transform, fit kwargs): the default path (equal widths, average init, dense
# bank) and the other one (mixed widths -> PCA init, lazy bank, other depth/dim/bias).
CASES = [
    ("dense", lambda f: f, dict(epochs=3, seed=7)),
    (
        "lazy-mixed",
        lambda f: {n: (a[:, : 320 * (j + 2)] if j else a) for j, (n, a) in enumerate(f.items())},
        dict(epochs=3, seed=3, bank="lazy", depth=1, dim=256, batch=64, last_bias="zero", warmup=1),
    ),
]


def cli_flags(kw):
    out = []
    for k, v in kw.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fit_and_embed_match_cli(cli, demo, tmp_path, case):
    _, transform, kw = case
    tr, ytr, te, yte = demo
    tr, te = transform(tr), transform(te)
    train_store = make_store(cli, tmp_path, "train", tr, ytr)
    test_store = make_store(cli, tmp_path, "test", te, yte)

    run(cli, "fit", "--train", train_store, "--out", tmp_path / "cli-model", *cli_flags(kw))
    run(cli, "export", "--model", tmp_path / "cli-model", "--out", tmp_path / "cli-train.npy")
    run(cli, "embed", "--model", tmp_path / "cli-model", "--features", test_store, "--out", tmp_path / "cli-test.npy")
    cli_train = np.load(tmp_path / "cli-train.npy")
    cli_test = np.load(tmp_path / "cli-test.npy")

    model = ensembed.fit(tr, **kw, threads=THREADS)
    assert model.threads == THREADS
    z_train = model.train_representations
    assert z_train.dtype == np.float32 and z_train.shape == cli_train.shape
    assert np.array_equal(z_train, cli_train), "training representations differ from the CLI's"
    z_test = model.embed(te, threads=THREADS)
    assert np.array_equal(z_test, cli_test), "embeddings differ from the CLI's"

    # The CLI's fit.json says the same as the Python model.
    record = json.loads((tmp_path / "cli-model" / "fit.json").read_text())
    assert record["config"] == model.config
    assert record["history"] == model.history

    # A CLI model loaded in Python embeds like the CLI...
    loaded = ensembed.load(tmp_path / "cli-model")
    assert np.array_equal(loaded.train_representations, cli_train)
    assert np.array_equal(loaded.embed(te, threads=THREADS), cli_test)
    # ...and a Python model saved to disk is a CLI model.
    model.save(tmp_path / "py-model")
    run(cli, "embed", "--model", tmp_path / "py-model", "--features", test_store, "--out", tmp_path / "cli-test2.npy")
    assert np.array_equal(np.load(tmp_path / "cli-test2.npy"), cli_test)
    run(cli, "export", "--model", tmp_path / "py-model", "--out", tmp_path / "py-train.npy")
    assert np.array_equal(np.load(tmp_path / "py-train.npy"), cli_train)
    assert json.loads((tmp_path / "py-model" / "fit.json").read_text())["threads"] == THREADS


def test_embed_overrides_match_cli(cli, demo, tmp_path):
    tr, ytr, te, yte = demo
    train_store = make_store(cli, tmp_path, "train", tr, ytr)
    test_store = make_store(cli, tmp_path, "test", te, yte)
    run(cli, "fit", "--train", train_store, "--out", tmp_path / "m", "--epochs", "2")
    run(cli, "embed", "--model", tmp_path / "m", "--features", test_store, "--out", tmp_path / "e.npy",
        "--epochs", "4", "--lr", "0.001", "--bank", "lazy", "--batch", "32")
    z = ensembed.load(tmp_path / "m").embed(te, epochs=4, lr=0.001, bank="lazy", batch=32, threads=THREADS)
    assert np.array_equal(z, np.load(tmp_path / "e.npy"))


def test_compare_matches_cli_json(cli, demo, tmp_path):
    tr, ytr, te, yte = demo
    train_store = make_store(cli, tmp_path, "train", tr, ytr)
    test_store = make_store(cli, tmp_path, "test", te, yte)
    out = run(cli, "compare", "--train", train_store, "--test", test_store, "--epochs", "2", "--seed", "1",
              "--k", "10,20,50", "--json")
    ours = ensembed.compare(tr, ytr, te, yte, epochs=2, seed=1, k=[10, 20, 50], threads=THREADS)
    assert ours == json.loads(out)

    # Transfer: the CLI's `compare --model` against `compare(model=...)`.
    run(cli, "fit", "--train", train_store, "--out", tmp_path / "m", "--epochs", "2", "--bank", "lazy")
    out = run(cli, "compare", "--train", train_store, "--test", test_store, "--model", tmp_path / "m",
              "--epochs", "1", "--json")
    ours = ensembed.compare(tr, ytr, te, yte, epochs=1, model=ensembed.load(tmp_path / "m"), threads=THREADS)
    assert ours == json.loads(out)


def test_baselines_and_knn_match_cli(cli, demo, tmp_path):
    tr, ytr, te, yte = demo
    train_store = make_store(cli, tmp_path, "train", tr, ytr)
    test_store = make_store(cli, tmp_path, "test", te, yte)
    for kind, fn in [("average", ensembed.baselines.average), ("concat", ensembed.baselines.concat)]:
        run(cli, "export", "--store", train_store, "--baseline", kind, "--out", tmp_path / f"{kind}-train.npy")
        run(cli, "export", "--store", test_store, "--baseline", kind, "--out", tmp_path / f"{kind}-test.npy")
        a, b = fn(tr), fn(te)
        assert np.array_equal(a, np.load(tmp_path / f"{kind}-train.npy"))
        assert np.array_equal(b, np.load(tmp_path / f"{kind}-test.npy"))
    out = json.loads(run(cli, "knn", "--train", train_store, "--test", test_store,
                         "--train-repr", tmp_path / "concat-train.npy", "--test-repr", tmp_path / "concat-test.npy",
                         "--k", "1,5,20", "--vote", "majority", "--json"))
    ours = ensembed.knn(a, ytr, b, yte, k=[1, 5, 20], vote="majority")
    assert ours == {s["k"]: {"top1": s["top1"], "top5": s["top5"]} for s in out["representations"]["scores"]}
