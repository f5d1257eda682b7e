"""The Python package against the `elx` command line, on the repository's fixtures.

Run by tools/test-python.sh in a fresh virtual environment that installed the built wheel;
ELX_CLI names the `elx` binary of the same build, ELX_REPO the repository root.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import eigenlorax as elx

REPO = Path(os.environ.get("ELX_REPO", Path(__file__).resolve().parents[2]))
CLI = os.environ.get("ELX_CLI", str(REPO / "target" / "debug" / "elx"))
ADAPTERS = [f"models/fixtures/adapters/task{i}" for i in range(5)]
MODEL = "models/fixtures/tiny-bert/model.onnx"
TOKENIZER = "tests/ort_support/tokenizer.json"
TEXTS = ["hello world", "the movie", "unbelievable movies!", "hello, the world"]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    # Paths are recorded in bundles as given: the CLI and Python see the same strings.
    monkeypatch.chdir(REPO)


def elx_cli(*args):
    return subprocess.run([CLI, *map(str, args)], check=True, capture_output=True, text=True).stdout


def state_dict_adapter(folder):
    cfg = json.loads((REPO / folder / "adapter_config.json").read_text())
    sd = load_file(str(REPO / folder / "adapter_model.safetensors"))
    return elx.Adapter(sd, cfg, name=folder)


@pytest.fixture(scope="module")
def bound(tmp_path_factory):
    """A bundle of task0..4 bound to the tiny BERT, with task files for task1 (head) and
    task2 (no head), all written by the CLI."""
    d = tmp_path_factory.mktemp("bound")
    os.chdir(REPO)
    elx_cli("extract", *ADAPTERS, "-o", d / "d.elxb")
    elx_cli("bind", d / "d.elxb", "--base", MODEL)
    elx_cli(
        "project", "models/fixtures/adapters/task1", "--bundle", d / "d.elxb", "-o", d / "t1.elxc",
        "--head", "models/fixtures/adapters/task1/head.safetensors",
    )
    elx_cli("project", "models/fixtures/adapters/task2", "--bundle", d / "d.elxb", "-o", d / "t2.elxc")
    return d


def test_extract_equals_cli_byte_for_byte(tmp_path):
    for opts, cli_opts in [({}, []), ({"k": 3, "center": True}, ["--k", "3", "--center"])]:
        elx_cli("extract", *ADAPTERS, "-o", tmp_path / "cli.elxb", *cli_opts)
        b = elx.extract(ADAPTERS, **opts)
        b.save(tmp_path / "py.elxb")
        assert (tmp_path / "py.elxb").read_bytes() == (tmp_path / "cli.elxb").read_bytes()
        assert b.id in elx_cli("inspect", tmp_path / "cli.elxb")


def test_import_and_folder_extraction_leave_numpy_unimported(tmp_path):
    # numpy's import is a twentieth of a 50-adapter extraction (issue 30's 1.05x budget):
    # the package imports it only where arrays are involved.
    code = (
        "import sys, eigenlorax as elx\n"
        "assert 'numpy' not in sys.modules, 'import'\n"
        f"elx.extract({ADAPTERS!r}, k=4).save({str(tmp_path / 'b.elxb')!r})\n"
        "assert 'numpy' not in sys.modules, 'extract'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_state_dicts_give_the_folders_bundle():
    from_folders = elx.extract(ADAPTERS, k=4)
    from_memory = elx.extract([state_dict_adapter(a) for a in ADAPTERS], k=4)
    assert from_memory.id == from_folders.id
    assert from_memory.to_bytes() == from_folders.to_bytes()
    # Mixed: folders and state dicts in one call.
    mixed = elx.extract([ADAPTERS[0], state_dict_adapter(ADAPTERS[1]), *ADAPTERS[2:]], k=4)
    assert mixed.id == from_folders.id


def test_state_dict_other_name_other_id_same_bases():
    a = elx.extract(ADAPTERS, k=4)
    renamed = [elx.Adapter(state_dict_adapter(p).state_dict, state_dict_adapter(p).config, name=f"mem{i}")
               for i, p in enumerate(ADAPTERS)]
    b = elx.extract(renamed, k=4)
    assert b.id != a.id  # the sources' names are part of the manifest
    assert b.ranks == a.ranks


def test_non_contiguous_and_float16_state_dicts():
    ad = state_dict_adapter(ADAPTERS[0])
    # A Fortran-ordered copy is made contiguous; the values, hence the bundle, are the same.
    sd = {k: np.asfortranarray(v) for k, v in ad.state_dict.items()}
    same = elx.extract([elx.Adapter(sd, ad.config, name=ad.name), *ADAPTERS[1:]], k=4)
    assert same.id == elx.extract(ADAPTERS, k=4).id
    half = {k: v.astype(np.float16) for k, v in ad.state_dict.items()}
    b = elx.extract([elx.Adapter(half, ad.config, name="half"), *ADAPTERS[1:]], k=4)
    assert b.modules == elx.extract(ADAPTERS, k=4).modules


def test_torch_tensors_when_torch_is_installed():
    torch = pytest.importorskip("torch")
    ad = state_dict_adapter(ADAPTERS[0])
    sd = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in ad.state_dict.items()}
    b = elx.extract([elx.Adapter(sd, ad.config, name=ad.name), *ADAPTERS[1:]], k=4)
    assert b.id == elx.extract(ADAPTERS, k=4).id
    bf = {k: v.detach().to(torch.bfloat16) for k, v in sd.items()}
    elx.extract([elx.Adapter(bf, ad.config, name="bf16"), *ADAPTERS[1:]], k=4)


def test_progress_callback_and_its_exception():
    seen = []
    elx.extract(ADAPTERS, k=2, progress=lambda d, t, name: seen.append((d, t, name)))
    modules = elx.extract(ADAPTERS, k=2).modules
    assert sorted(n for _, _, n in seen) == modules
    assert sorted(d for d, _, _ in seen) == list(range(1, len(modules) + 1))
    assert {t for _, t, _ in seen} == {len(modules)}

    def stop(*_):
        raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        elx.extract(ADAPTERS, k=2, progress=stop)


def test_project_and_reconstruct_equal_cli(tmp_path, bound):
    b = elx.Bundle.load(bound / "d.elxb")
    c = b.project("models/fixtures/adapters/task5")
    c.save(tmp_path / "py.elxc")
    elx_cli("project", "models/fixtures/adapters/task5", "--bundle", bound / "d.elxb", "-o", tmp_path / "cli.elxc")
    assert (tmp_path / "py.elxc").read_bytes() == (tmp_path / "cli.elxc").read_bytes()
    assert c.task == "task5" and c.subspace_id == b.id
    assert all(0 <= e < 1 for e in c.errors.values())
    # The same adapter from memory projects to the same coefficients.
    c2 = b.project(state_dict_adapter("models/fixtures/adapters/task5"), task="task5")
    c2.save(tmp_path / "mem.elxc")
    assert (tmp_path / "mem.elxc").read_bytes() == (tmp_path / "cli.elxc").read_bytes()
    b.reconstruct(c, tmp_path / "py_peft")
    elx_cli("reconstruct", tmp_path / "cli.elxc", "--bundle", bound / "d.elxb", "-o", tmp_path / "cli_peft")
    for f in sorted(p.name for p in (tmp_path / "cli_peft").iterdir()):
        assert (tmp_path / "py_peft" / f).read_bytes() == (tmp_path / "cli_peft" / f).read_bytes(), f


def cli_run_json(bound, task):
    args = ["run", "--model", MODEL, "--bundle", bound / "d.elxb", "--tokenizer", TOKENIZER, "--task", task, "--json"]
    for t in TEXTS:
        args += ["--text", t]
    return [json.loads(line) for line in elx_cli(*args).splitlines()]


def test_runtime_equals_cli_run(bound):
    rt = elx.Runtime(MODEL, bound / "d.elxb", tokenizer=TOKENIZER)
    assert rt.backend == "tract"
    t2 = rt.load_task(bound / "t2.elxc")
    pooled = rt.run(TEXTS, t2)
    want = np.array([r["pooled"] for r in cli_run_json(bound, bound / "t2.elxc")], dtype=np.float32)
    assert pooled.dtype == np.float32 and pooled.shape == want.shape
    np.testing.assert_array_equal(pooled, want)
    t1 = rt.load_task(bound / "t1.elxc")
    preds = rt.predict(TEXTS, t1)
    for p, r in zip(preds, cli_run_json(bound, bound / "t1.elxc")):
        assert p.label == r["label"]
        assert p.probs == pytest.approx(r["probs"], rel=0, abs=0)
    # A mixed batch: row i with the i-th task, as separate runs give.
    mixed = rt.run(TEXTS[:2], [t1, t2])
    np.testing.assert_allclose(mixed[1], pooled[1], rtol=1e-5, atol=1e-6)
    # Token ids give what the tokenizer's ids give.
    base = rt.run(TEXTS[:1])
    assert base.shape[0] == 1 and np.isfinite(base).all()


def test_finetune_equals_cli(tmp_path, bound):
    train = [("good movie", "pos"), ("great film", "pos"), ("bad movie", "neg"), ("awful film", "neg"),
             ("lovely story", "pos"), ("boring plot", "neg"), ("superb acting", "pos"), ("dull scenes", "neg")]
    val = [("fine movie", "pos"), ("terrible film", "neg")]
    for name, rows in [("train", train), ("val", val)]:
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for t, l in rows:
                f.write(json.dumps({"text": t, "label": l}) + "\n")
    elx_cli(
        "finetune", "--model", MODEL, "--bundle", bound / "d.elxb", "--tokenizer", TOKENIZER,
        "--train", tmp_path / "train.jsonl", "--val", tmp_path / "val.jsonl", "-o", tmp_path / "cli.elxc",
        "--task", "ft", "--steps", "6", "--eval-every", "2", "--batch-size", "4", "--seed", "3",
    )
    rt = elx.Runtime(MODEL, bound / "d.elxb", tokenizer=TOKENIZER)
    steps = []
    r = rt.finetune(train, val, task="ft", output=tmp_path / "py.elxc", steps=6, eval_every=2,
                    batch_size=4, seed=3, progress=lambda s, t, _: steps.append((s, t)))
    assert (tmp_path / "py.elxc").read_bytes() == (tmp_path / "cli.elxc").read_bytes()
    assert steps == [(s, 6) for s in range(1, r.steps + 1)]
    assert 0 <= r.train_accuracy <= 1 and r.val_loss is not None and np.isfinite(r.val_loss)
    # The trained task is served at once.
    assert [p.label for p in rt.predict(["good movie"], r.task)][0] in {"pos", "neg"}


def test_diagnostics_equal_cli_held_out(bound):
    pool = [f"models/fixtures/adapters/task{i}" for i in range(4)]
    d = elx.diagnostics(elx.Bundle.load(bound / "d.elxb"), pool)
    out = elx_cli("inspect", bound / "d.elxb", "--adapters", *pool, "--held-out")
    assert f"verdict: {d.line}" in out
    assert d.verdict in {"expected", "partial", "none"}
    assert len(d.adapters) == 4
    assert d.captured == pytest.approx(np.mean([a["recycled"]["captured"] for a in d.adapters]), rel=1e-12)
    assert 0 <= d.random <= d.captured <= 1 and d.min <= d.captured <= d.max
    assert d.q1 <= d.median <= d.q3 and d.clusters == []
    with pytest.raises(elx.UsageError, match="at least two"):
        elx.diagnostics(elx.Bundle.load(bound / "d.elxb"), pool[:1])


def test_bad_inputs_raise_with_the_library_message(tmp_path, bound):
    with pytest.raises(elx.BadInputError, match="nothing at this path"):
        elx.extract(["/nonexistent/adapter"])
    with pytest.raises(elx.UsageError, match="k must be at least 1"):
        elx.extract(ADAPTERS, k=0)
    with pytest.raises(elx.UsageError, match="energy"):
        elx.extract(ADAPTERS, energy=1.5)
    with pytest.raises(elx.UsageError, match="no adapters"):
        elx.extract([])
    ad = state_dict_adapter(ADAPTERS[0])
    key = next(k for k in ad.state_dict if k.endswith("lora_B.weight"))
    broken = dict(ad.state_dict)
    broken[key] = broken[key][:, :1]  # rank 1 against lora_A's rank
    with pytest.raises(elx.BadInputError) as e:
        elx.extract([elx.Adapter(broken, ad.config, name="broken")])
    assert "broken" in str(e.value) and key.split(".lora_B")[0].split(".")[-1] in str(e.value)
    with pytest.raises(elx.UsageError, match="complex"):
        elx.extract([elx.Adapter({key: np.zeros((2, 2), np.complex64)}, ad.config)])
    with pytest.raises(elx.BadInputError):
        elx.extract([elx.Adapter({}, ad.config, name="empty")])
    with pytest.raises(elx.ElxError):
        elx.extract([elx.Adapter(ad.state_dict, "{not json", name="badcfg")])
    assert issubclass(elx.BadInputError, elx.ElxError)
    with pytest.raises(elx.ElxIOError, match="/nonexistent/b.elxb"):
        elx.Runtime(MODEL, "/nonexistent/b.elxb", tokenizer=TOKENIZER)
    with pytest.raises(elx.BadInputError):
        elx.Bundle.load(TOKENIZER)
    rt = elx.Runtime(MODEL, bound / "d.elxb", tokenizer=TOKENIZER)
    with pytest.raises(elx.UsageError, match="backend"):
        elx.Runtime(MODEL, bound / "d.elxb", backend="gpu")
    with pytest.raises(elx.ElxError, match="task 999"):
        rt.run(TEXTS, 999)
    with pytest.raises(elx.ElxError):
        rt.load_task(bound / "d.elxb")
    with pytest.raises(elx.UsageError, match="has no head"):
        rt.predict(TEXTS, rt.load_task(bound / "t2.elxc"))
    with pytest.raises(elx.ElxError, match="at least 2 distinct"):
        rt.finetune([("a", "x"), ("b", "x")], steps=1)
    with pytest.raises(elx.ElxError, match="mask"):
        rt.run(np.array([[1, 2, 3]]), mask=np.array([[1, 2, 1]]))
    # The CLI's message for a missing task file is the Python one.
    cli = subprocess.run([CLI, "run", "--model", MODEL, "--bundle", bound / "d.elxb", "--tokenizer", TOKENIZER,
                          "--task", "/nonexistent/t.elxc", "--text", "x"], capture_output=True, text=True)
    with pytest.raises(elx.ElxIOError) as e:
        rt.load_task("/nonexistent/t.elxc")
    assert str(e.value) in cli.stderr


def test_a_thread_runs_while_another_loads(bound):
    rt = elx.Runtime(MODEL, bound / "d.elxb", tokenizer=TOKENIZER)
    t2 = rt.load_task(bound / "t2.elxc")
    want = rt.run(TEXTS, t2)
    errors, runs, loads = [], [0], [0]
    stop = threading.Event()

    def runner():
        try:
            while not stop.is_set():
                np.testing.assert_array_equal(rt.run(TEXTS, t2), want)
                runs[0] += 1
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    th = threading.Thread(target=runner)
    th.start()
    try:
        for _ in range(20):
            tid = rt.load_task(bound / "t1.elxc")
            rt.unload_task(tid)
            loads[0] += 1
    finally:
        stop.set()
        th.join(timeout=120)
    assert not th.is_alive() and not errors, errors
    assert loads[0] == 20 and runs[0] >= 1
