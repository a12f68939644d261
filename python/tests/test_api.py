"""The Python API on its own: argument handling and errors, numpy in and out, save/load, k-NN on
a case computed by hand, the comparison's keys, baselines, progress and Ctrl-C."""

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import ensembed


def toy(n=40, dims=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    return [np.abs(rng.standard_normal((n, d))).astype(np.float32) + 0.01 for d in dims]


FAST = dict(epochs=2, batch=16, threads=1)


# ----------------------------------------------------------------------------- numpy in/out


def test_fit_returns_model_with_numpy_outputs():
    feats = toy()
    m = ensembed.fit(feats, **FAST)
    z = m.train_representations
    assert isinstance(z, np.ndarray) and z.dtype == np.float32 and z.shape == (40, 16)
    assert not z.flags.writeable, "train_representations is a read-only view of the model"
    assert np.shares_memory(z, m.train_representations), "no copy per access"
    assert m.names == ["b0", "b1"] and m.dim == 16
    assert [h["epoch"] for h in m.history] == [0, 1]
    assert {"epoch", "loss", "bank_learning"} <= set(m.history[0])
    assert m.config["epochs"] == 2 and m.config["bank"] == "dense" and m.config["lr"] == pytest.approx(3e-4)
    e = m.embed(toy(n=7, seed=1))
    assert e.shape == (7, 16) and e.dtype == np.float32 and e.flags.writeable and e.flags.c_contiguous
    assert "n=40" in repr(m)


def test_float32_contiguous_is_used_in_place_and_others_convert_once():
    a = np.ones((3, 4), np.float32)
    assert ensembed._as_matrix(a, "x") is a
    for b in [a.astype(np.float16), a.astype(np.float64), np.asfortranarray(np.ones((3, 4), np.float32)),
              np.ones((3, 8), np.float32)[:, ::2]]:
        c = ensembed._as_matrix(b, "x")
        assert c.dtype == np.float32 and c.flags.c_contiguous and np.array_equal(c, a)


def test_dtypes_and_layouts_give_the_same_result():
    feats16 = [f.astype(np.float16) for f in toy()]
    ref = ensembed.fit([f.astype(np.float32) for f in feats16], **FAST).train_representations
    for conv in [lambda f: f, lambda f: f.astype(np.float64), lambda f: np.asfortranarray(f.astype(np.float32)),
                 lambda f: f.tolist()]:
        z = ensembed.fit([conv(f) for f in feats16], **FAST).train_representations
        assert np.array_equal(z, ref)


def test_dict_input_names_the_backbones_and_embed_reorders_by_name():
    a, b = toy()
    m = ensembed.fit({"alpha": a, "beta": b}, **FAST)
    assert m.names == ["alpha", "beta"]
    t = toy(n=5, seed=3)
    assert np.array_equal(m.embed({"beta": t[1], "alpha": t[0]}), m.embed(t))
    with pytest.raises(ValueError, match="missing"):
        m.embed({"alpha": t[0]})


def test_fit_is_deterministic_for_a_seed():
    feats = toy()
    a = ensembed.fit(feats, seed=5, **FAST).train_representations
    b = ensembed.fit(feats, seed=5, **FAST).train_representations
    c = ensembed.fit(feats, seed=6, **FAST).train_representations
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_inputs_are_not_modified():
    feats = toy()
    before = [f.copy() for f in feats]
    m = ensembed.fit(feats, **FAST)
    m.embed(feats)
    ensembed.knn(feats[0], np.arange(40) % 3, feats[1], np.arange(40) % 3, k=5)
    assert all(np.array_equal(x, y) for x, y in zip(feats, before))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (np.ones((40, 16), np.int64), TypeError, r"feats\[1\].*int64"),
        (np.array([[object()] * 16] * 40), TypeError, r"feats\[1\].*object"),
        (np.ones((40, 16), np.complex64), TypeError, r"feats\[1\].*complex64"),
        (np.ones((40, 4, 4), np.float32), ValueError, r"feats\[1\].*3-D.*\(40, 4, 4\)"),
        (np.ones(40, np.float32), ValueError, r"feats\[1\].*1-D"),
        (np.ones((39, 16), np.float32), ValueError, r"same number of rows.*40.*39"),
        (np.ones((40, 0), np.float32), ValueError, r"non-empty"),
    ],
)
def test_bad_feature_arrays_raise(bad, exc, match):
    with pytest.raises(exc, match=match):
        ensembed.fit([toy()[0], bad], **FAST)


def test_nan_inf_and_zero_rows_are_rejected_with_their_position():
    a, b = toy()
    b[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"feats\[1\].*non-finite value NaN at row 7, column 3"):
        ensembed.fit([a, b], **FAST)
    b[7, 3] = np.inf
    with pytest.raises(ValueError, match=r"non-finite value inf at row 7, column 3"):
        ensembed.fit([a, b], **FAST)
    b[7] = 0
    with pytest.raises(ValueError, match=r"row 7 is all zeros"):
        ensembed.fit([a, b], **FAST)
    m = ensembed.fit(toy(), **FAST)
    with pytest.raises(ValueError, match="non-finite"):
        m.embed([a, np.full_like(a, np.nan)])


def test_bad_settings_raise_value_errors_naming_them():
    feats = toy()
    for kw, match in [
        (dict(epochs=0), "epochs"),
        (dict(depth=9), "depth"),
        (dict(bank="sparse"), "bank"),
        (dict(last_bias="one"), "last_bias"),
        (dict(lr=-1.0), "lr"),
        (dict(warmup=5, epochs=2), "warmup"),
        (dict(threads=0), "threads"),
    ]:
        with pytest.raises(ValueError, match=match):
            ensembed.fit(feats, **{**FAST, **kw})
    with pytest.raises(TypeError, match="epochs"):
        ensembed.fit(feats, epochs=1.5)
    with pytest.raises(ValueError, match="names"):
        ensembed.fit(feats, names=["a"], **FAST)
    with pytest.raises(ValueError, match="appears twice"):
        ensembed.fit(feats, names=["a", "a"], **FAST)
    with pytest.raises(ValueError, match="not allowed"):
        ensembed.fit(feats, names=["a", "b/c"], **FAST)
    with pytest.raises(TypeError):
        ensembed.fit("not features")


def test_embed_checks_backbones_against_the_model():
    m = ensembed.fit(toy(), **FAST)
    with pytest.raises(ValueError, match="2 backbones"):
        m.embed(toy(n=5, dims=(16,)))
    with pytest.raises(ValueError, match="backbones of the features against the model"):
        m.embed(toy(n=5, dims=(16, 8)))
    with pytest.raises(ValueError, match="epochs"):
        m.embed(toy(n=5), epochs=0)


def test_knn_errors():
    x = toy(n=10)[0]
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match=r"`k` = 11: larger than the 10 training samples"):
        ensembed.knn(x, y, x, y, k=11)
    with pytest.raises(ValueError, match="train_labels"):
        ensembed.knn(x, y[:9], x, y, k=1)
    with pytest.raises(ValueError, match="negative"):
        ensembed.knn(x, -y, x, y, k=1)
    with pytest.raises(TypeError, match="integer class labels"):
        ensembed.knn(x, y.astype(float), x, y, k=1)
    with pytest.raises(ValueError, match="columns"):
        ensembed.knn(x, y, x[:, :4], y, k=1)
    with pytest.raises(ValueError, match="non-finite"):
        ensembed.knn(np.where(np.eye(10, 16) > 0, np.nan, x), y, x, y, k=1)
    with pytest.raises(ValueError, match="vote"):
        ensembed.knn(x, y, x, y, vote="plurality")


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    feats = toy()
    m = ensembed.fit(feats, bank="lazy", **FAST)
    m.save(tmp_path / "model")
    assert sorted(os.listdir(tmp_path / "model")) == ["fit.json", "model.safetensors", "train_repr.safetensors"]
    m2 = ensembed.load(tmp_path / "model")
    assert np.array_equal(m2.train_representations, m.train_representations)
    assert m2.history == m.history and m2.config == m.config and m2.spec == m.spec and m2.names == m.names
    t = toy(n=6, seed=9)
    assert np.array_equal(m2.embed(t, threads=1), m.embed(t, threads=1))
    with pytest.raises(FileExistsError, match="already exists"):
        m.save(tmp_path / "model")
    m.save(str(tmp_path / "model"), overwrite=True)
    with pytest.raises(FileNotFoundError):
        ensembed.load(tmp_path / "missing")
    (tmp_path / "model" / "fit.json").write_text("{")
    with pytest.raises(ValueError, match="fit.json"):
        ensembed.load(tmp_path / "model")


# ----------------------------------------------------------------------------- k-NN by hand


def test_knn_on_a_case_computed_by_hand():
    train = np.array([[1, 0], [0, 1], [1, 1]], np.float32)  # classes 0, 1, 1
    ytr = np.array([0, 1, 1])
    test = np.array([[1, 0.1], [0.1, 1], [1, 0.9]], np.float32)  # classes 0, 1, 0
    yte = np.array([0, 1, 0])
    # k=1: q0 -> train 0 (right), q1 -> train 1 (right), q2 -> train 2 (class 1, wrong).
    # k=3, weighted (T=0.07): q2's class-1 votes exp(0.669/T) + exp(0.999/T) beat exp(0.743/T).
    # k=3, majority: every query sees one vote for class 0 and two for class 1.
    r = ensembed.knn(train, ytr, test, yte, k=[1, 3])
    assert r == {1: {"top1": 2 / 3, "top5": 1.0}, 3: {"top1": 2 / 3, "top5": 1.0}}
    r = ensembed.knn(train, ytr, test, yte, k=3, vote="majority")
    assert r == {3: {"top1": 1 / 3, "top5": 1.0}}
    # A large temperature makes the weighted vote a majority vote.
    assert ensembed.knn(train, ytr, test, yte, k=3, t=1e4)[3]["top1"] == pytest.approx(1 / 3)
    # Scaling rows changes nothing: the binding normalises them.
    assert ensembed.knn(5 * train, ytr, 0.1 * test, yte, k=[1, 3]) == ensembed.knn(train, ytr, test, yte, k=[1, 3])


def test_knn_top5_with_many_classes():
    # 7 classes, one train row each along an axis. Query i is e_i + 0.01: class i gets the big
    # vote, the six others exactly equal small ones, ranked among themselves by class index
    # (ties go to the lower index). Its true class is i - 1 (6 for i = 0), so it is never
    # top-1, and its rank is i for i >= 1 (the i - 1 classes below it, plus class i) and 6 for
    # i = 0: top-5 holds for i = 1..4.
    train = np.eye(7, dtype=np.float32)
    ytr = np.arange(7)
    test = np.eye(7, dtype=np.float32) + 0.01
    yte = np.roll(np.arange(7), 1)
    r = ensembed.knn(train, ytr, test, yte, k=7)
    assert r == {7: {"top1": 0.0, "top5": 4 / 7}}


# ----------------------------------------------------------------------------- compare, baselines


def test_compare_returns_the_documented_keys(demo):
    tr, ytr, te, yte = demo
    r = ensembed.compare(tr, ytr, te, yte, epochs=1, k=[10, 20], threads=2)
    names = list(tr)
    assert r["k"] == 20
    assert set(r["knn_top1"]) == set(names) | {"average", "concat", "ours"}
    assert set(r["knn_top5"]) == set(r["knn_top1"])
    assert all(0.0 <= v <= 1.0 for v in r["knn_top1"].values())
    assert {"methods", "skipped", "fit_history", "embed_history", "config"} <= set(r)
    assert [m["name"] for m in r["methods"]] == names + ["average", "concat", "ours"]
    assert r["config"]["fit"]["epochs"] == 1 and len(r["fit_history"]) == 1
    # Mixed widths: the average is skipped (None), with a reason.
    tr2 = {n: a[:, :640] if j == 0 else a for j, (n, a) in enumerate(tr.items())}
    te2 = {n: a[:, :640] if j == 0 else a for j, (n, a) in enumerate(te.items())}
    r = ensembed.compare(tr2, ytr, te2, yte, epochs=1, dim=64, k=20, threads=2)
    assert r["knn_top1"]["average"] is None and r["skipped"][0]["method"] == "average"
    with pytest.raises(ValueError, match="test_feats"):
        ensembed.compare(tr, ytr, {"x": te[names[0]]}, yte, epochs=1)


def test_baselines_by_hand():
    a, b = toy(n=5, dims=(4, 4))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(ensembed.baselines.average([a, b]), unit(unit(a) + unit(b)), rtol=1e-6)
    np.testing.assert_allclose(ensembed.baselines.concat([a, b]), unit(np.hstack([unit(a), unit(b)])), rtol=1e-6)
    with pytest.raises(ValueError, match="average needs equal widths"):
        ensembed.baselines.average(toy(n=5, dims=(4, 3)))


# ----------------------------------------------------------------------------- progress, GIL, Ctrl-C


def test_progress_callback_and_bar(capsys):
    calls = []
    ensembed.fit(toy(), progress=lambda *a: calls.append(a), **FAST)
    assert calls and all(len(c) == 4 for c in calls)
    stage, done, total, msg = calls[-1]
    assert stage == "fit" and done == total == 2 * 3 and msg.startswith("epoch 2/2 loss")
    ensembed.fit(toy(), progress=True, **FAST)
    err = capsys.readouterr().err
    assert "fit [" in err and "6/6" in err and err.endswith("\n")
    with pytest.raises(TypeError, match="progress"):
        ensembed.fit(toy(), progress="yes", **FAST)


def test_exception_in_progress_callback_stops_the_call():
    def boom(*_):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        ensembed.fit(toy(n=2000, dims=(64, 64)), epochs=200, batch=8, threads=1, progress=boom)


def test_gil_is_released_during_fit():
    feats = toy(n=2000, dims=(128, 128))
    ticks = []
    t = threading.Thread(target=lambda: ensembed.fit(feats, epochs=3, batch=32, threads=1))
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    assert len(ticks) > 20, "the main thread should run while fit works"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to self is POSIX-only")
def test_ctrl_c_interrupts_a_long_fit():
    feats = toy(n=4000, dims=(128, 128))
    sent = []

    def interrupt():
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    # The signal is sent once the fit is running (its first progress report), not after a fixed
    # delay: on a loaded machine a fixed delay could fire while the arguments are still being
    # converted, which is not what this test is about.
    timer = threading.Timer(0.3, interrupt)

    def on_progress(*_):
        if not timer.is_alive() and not sent:
            timer.start()

    # A shell that starts a job in the background (CI runners, `cmd &`) hands it SIGINT ignored,
    # and Python then keeps it ignored: install Python's own handler for the test's duration.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            ensembed.fit(feats, epochs=10_000, batch=16, threads=1, progress=on_progress)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent and time.perf_counter() - sent[0] < 10
    timer.join()
    # The interpreter and the package still work.
    assert ensembed.fit(toy(), **FAST).train_representations.shape == (40, 16)
