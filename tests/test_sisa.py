"""SISA: the ensemble, exact deletion, and SISA versions in the model store through the CLI.

The unit tests train a 3-shard, 2-slice MLP ensemble on digits in seconds; the store tests
run ``dormant train --sisa``, ``dormant forget`` and ``dormant ledger`` as a user would."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import copy_store, trained_store
from cli_helpers import run_cli as _cli
from cli_helpers import write_ids as _ids

from dormant.cli import main
from dormant.engine import Recipe, evaluate
from dormant.models import ModelSpec, create_model
from dormant.models.ensemble import Ensemble
from dormant.requests import Ledger, ModelStore
from dormant.unlearn.sisa import Assignment, Plan, SisaHparams, forget, train

POLICY = """\
budget: {relearn_steps: 20, relearn_lr: 1.0e-3, eval_every: 5, leaked_k: 2,
         defender_images: 40, nc: {epochs: 2, batch_size: 20}, uap: {steps: 5},
         mia_size: 200}
"""


@pytest.fixture(scope="module")
def tensors(digits):
    return digits.x_train, digits.y_train, digits.x_test, digits.y_test


def _init(seed: int):
    return create_model(ModelSpec("mlp", 1, 10, 8), seed=seed)


def _plan(shards=3, slices=2, seed=0) -> Plan:
    recipe = Recipe(steps=400, lr=1e-3, augment="none", final_lr=1e-5)
    return Plan.of(SisaHparams(shards=shards, slices=slices), recipe, 1437, seed)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_assignment_is_a_seeded_partition_into_even_shards_and_slices():
    ids = torch.arange(0, 1000, 2)  # every other id: the rest are never trained on
    a = Assignment.draw(ids, 1000, 5, 4, seed=3)
    assert (a.shard[1::2] == -1).all() and (a.slice[1::2] == -1).all()
    sizes = torch.bincount(a.shard[ids], minlength=5)
    assert sizes.tolist() == [100] * 5
    for s in range(5):
        per_slice = torch.bincount(a.slice[a.shard == s], minlength=4).tolist()
        assert per_slice == [25] * 4
        # stage r trains on slices 0..r
        assert len(a.ids(s, 2)) == 75 and set(a.ids(s, 0).tolist()) <= set(a.ids(s, 2).tolist())
    assert torch.equal(Assignment.draw(ids, 1000, 5, 4, 3).shard, a.shard)
    assert not torch.equal(Assignment.draw(ids, 1000, 5, 4, 4).shard, a.shard)


def test_sliced_stages_cost_what_one_unsliced_pass_would():
    """The paper's rule: stage r runs 2/(R+1) of the monolithic passes over slices 0..r, so
    the whole ensemble trains about as many image visits as the monolithic model."""
    plan = _plan(shards=5, slices=4)
    a = Assignment.draw(torch.arange(1437), 1437, 5, 4, 0)
    steps = sum(plan.stage_steps(len(a.ids(s, r))) for s in range(5) for r in range(4))
    assert abs(steps - 400) <= 5 * 4  # one step of rounding per stage at most


def test_a_deletion_is_bit_exact_and_touches_only_the_shards_that_held_the_ids(tensors):
    x, y, _, _ = tensors
    plan = _plan()
    trained, cost = train(plan, x, y, torch.arange(len(y)), _init)
    assert len(cost.stages) == 3 and cost.steps > 0
    a = trained.assignment

    def held(shard: int, slice_: int, n: int = 1) -> torch.Tensor:
        return torch.nonzero((a.shard == shard) & (a.slice == slice_)).flatten()[:n]

    # two ids of shard 0, both in slice 1: slice 0's checkpoint never saw them
    first = held(0, 1, 2)
    after, done = forget(trained, x, y, first, _init)
    assert done.stages == {0: 1}
    for s in (1, 2):  # untouched: the very same checkpoints
        assert all(a is b for a, b in zip(after.checkpoints[s], trained.checkpoints[s],
                                           strict=True))
    assert after.checkpoints[0][0] is trained.checkpoints[0][0]
    assert not _same(after.checkpoints[0][1], trained.checkpoints[0][1])
    # then ids of shard 1 in slices 1 and 0: retrained from the earliest, slice 0
    second = torch.cat([held(1, 1), held(1, 0)])
    final, done = forget(after, x, y, second, _init)
    assert done.stages == {1: 0}
    assert all(a is b for a, b in zip(final.checkpoints[0], after.checkpoints[0], strict=True))
    # the forgotten ids, of both requests, are in no shard's training ids any more
    gone = torch.cat([first, second])
    assert (final.assignment.shard[gone] == -1).all()
    for s in range(3):
        assert not set(final.assignment.ids(s, 1).tolist()) & set(gone.tolist())
    # exact: bit for bit what training from scratch without the ids gives
    scratch, _ = train(plan, x, y, None, _init, assignment=final.assignment)
    for got, want in zip(final.checkpoints, scratch.checkpoints, strict=True):
        assert all(_same(a, b) for a, b in zip(got, want, strict=True))
    # and the shards retrained side by side give the same bits
    threaded, _ = forget(after, x, y, second, _init, workers=2)
    assert all(_same(a, b) for ga, gb in zip(threaded.checkpoints, final.checkpoints,
                                             strict=True) for a, b in zip(ga, gb, strict=True))


def test_the_ensemble_aggregates_by_mean_or_vote_and_passes_gradients(tensors):
    x, y, xt, yt = tensors
    trained, _ = train(_plan(), x, y, torch.arange(len(y)), _init)
    ens = trained.ensemble(_init, "cpu").eval()
    inputs = xt[:64].float() / 255
    probs = torch.stack([m(inputs).softmax(1) for m in ens.shards])
    assert torch.allclose(ens(inputs).exp(), probs.mean(0), atol=1e-5)
    vote = Ensemble(list(ens.shards), "vote").eval()
    labels = probs.argmax(2)  # (members, images)
    counts = F.one_hot(labels, 10).sum(0)
    winners = vote(inputs).argmax(1)
    assert (counts.gather(1, winners[:, None]).squeeze(1) == counts.max(1).values).all()
    # averaging helps: the ensemble beats its members' mean accuracy on the test set
    accs = [evaluate(m, xt, yt).acc for m in ens.shards]
    assert evaluate(ens, xt, yt).acc > sum(accs) / len(accs)
    # one loss on the aggregate trains every member (what the relearning attack does)
    ens.train()
    F.cross_entropy(vote(inputs), yt[:64]).backward()
    assert all(m[-1].weight.grad is not None and m[-1].weight.grad.abs().sum() > 0
               for m in ens.shards)


# --- the store, through the CLI ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sisa_base(tmp_path_factory) -> dict:
    return trained_store(tmp_path_factory.mktemp("sisa"), "d", POLICY, "--sisa",
                         "shards=3,slices=2")


@pytest.fixture
def sisa_store(sisa_base, tmp_path) -> Path:
    return copy_store(sisa_base, tmp_path)


def _forget(store: Path, policy: Path, *ids: Path, extra: tuple[str, ...] = ()) -> list[str]:
    out = ["forget", "--store", str(store), "--model", "d", "--requester", "alice",
           "--reason", "gdpr art. 17", "--policy", str(policy), "--device", "cpu", *extra]
    for p in ids:
        out += ["--ids", str(p)]
    return out


def _files(v) -> dict[tuple[int, int], dict]:
    return {(f["shard"], f["slice"]): f for f in v.files if f["role"] == "shard"}


def test_a_sisa_version_retrains_one_shard_and_keeps_the_others_byte_identical(
        sisa_store, sisa_base, tmp_path, capsys):
    st = ModelStore(sisa_store)
    v1 = st.resolve("d")
    assert v1.sisa["plan"]["shards"] == 3 and len(_files(v1)) == 6
    assignment = next(f for f in v1.files if f["role"] == "assignment")
    assert v1.sisa["assignment_sha256"] == assignment["sha256"]
    from dormant.requests.sharded import read_sisa

    state = read_sisa(st, v1, 1437)
    # ids of shard 1 only, the earliest in slice 1: slice 0's checkpoint is kept
    held = torch.nonzero((state.assignment.shard == 1) & (state.assignment.slice == 1)).flatten()
    ids = _ids(tmp_path / "a.txt", held[:25])
    capsys.readouterr()
    assert main(_forget(sisa_store, sisa_base["policy"], ids)) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "retrained 1 of 3 shards: shard 1 from slice 1" in out
    assert "for a full retrain" in out
    v2 = st.resolve("d", 2)
    rec = st.ledger.entries(kind="request-finished")[-1].payload
    assert rec["method"] == "sisa" and rec["oracle"].startswith("the new model")
    assert rec["sisa"]["retrained"] == [{"shard": 1, "from_slice": 1}]
    # cheaper than a full retrain, in optimiser steps (seconds depend on the machine's load)
    assert 0 < rec["sisa"]["steps"] < v1.sisa["steps"]
    assert rec["cost"]["full_retrain_seconds"] == v1.sisa["full_retrain_seconds"]
    before, after = _files(v1), _files(v2)
    for key in before:  # byte-identical: the same file, and the same bytes
        same = key != (1, 1)
        assert (before[key]["sha256"] == after[key]["sha256"]) == same, key
        if same:
            assert (sisa_store / after[key]["path"]).read_bytes() == \
                   (sisa_store / before[key]["path"]).read_bytes()
    # the forgotten ids are in no shard of v2
    state2 = read_sisa(st, v2, 1437)
    assert (state2.assignment.shard[held[:25]] == -1).all()
    assert set(st.deleted(v2)) == set(held[:25].tolist())
    capsys.readouterr()
    assert main(["ledger", "verify", str(sisa_store)]) == 0
    # every file: two aggregates, two assignments, 6 + 1 shard checkpoints, each once
    assert "11 checkpoint(s) re-hashed" in " ".join(capsys.readouterr().out.split())
    assert main(["ledger", "show", str(sisa_store)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "for a full retrain per request" in shown and "saved" in shown
    # a changed shard checkpoint that no request retrained is caught
    untouched = sisa_store / after[(0, 1)]["path"]
    data = bytearray(untouched.read_bytes())
    data[-1] ^= 1
    untouched.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["ledger", "verify", str(sisa_store)]) == 1
    assert after[(0, 1)]["path"] in "".join(capsys.readouterr().out.split())
    # and a request does not build on it
    assert main(_forget(sisa_store, sisa_base["policy"],
                        _ids(tmp_path / "b.txt", held[25:30]))) == 2
    assert "was changed since the ledger recorded it" in capsys.readouterr().err


def test_a_batch_retrains_once_and_gives_each_request_its_own_trail(sisa_store, sisa_base,
                                                                   tmp_path, capsys):
    order = torch.randperm(1437, generator=torch.Generator().manual_seed(1))
    folder = tmp_path / "pending"
    folder.mkdir()
    parts = [_ids(folder / f"r{i}.txt", order[25 * i:25 * (i + 1)]) for i in range(5)]
    one = _ids(tmp_path / "all.txt", order[:125])
    single = tmp_path / "single"
    shutil.copytree(sisa_store, single)
    assert main(_forget(single, sisa_base["policy"], one)) == 0
    assert main(_forget(sisa_store, sisa_base["policy"], folder)) == 0
    st = ModelStore(sisa_store)
    rows = st.ledger.entries(kind="request-finished")
    assert len(rows) == 5 and len({e.request_id for e in rows}) == 5
    assert {e.payload["to_version"] for e in rows} == {2}
    assert [v.version for v in st.versions("d")] == [1, 2]
    for e, part in zip(rows, parts, strict=True):
        assert e.payload["ids"] == sorted(int(i) for i in part.read_text().split())
        assert e.payload["batch"]["size"] == 5 and len(e.payload["checks"]) > 0
        assert (sisa_store / e.payload["report"]).is_file()
    assert set(st.deleted(st.resolve("d", 2))) == set(order[:125].tolist())
    # one retrain for the batch: the same stages and steps as one request of all the ids
    whole = ModelStore(single).ledger.entries(kind="request-finished")[-1].payload
    alone = whole["sisa"]
    # what the batch measured once and shared (same models, same retain set) is what the
    # single request measured
    for e in rows:
        for when in ("before", "after"):
            for key in ("retain_acc", "test_acc", "nc_norms", "uap_success"):
                assert e.payload["measurements"][when][key] == whole["measurements"][when][key]
    assert rows[0].payload["sisa"]["retrained"] == alone["retrained"]
    assert rows[0].payload["sisa"]["steps"] == alone["steps"]
    # and the same model: the union deleted at once, whichever way it was asked
    assert _files(st.resolve("d", 2)) == _files(ModelStore(single).resolve("d", 2))
    assert Ledger(sisa_store / "ledger.sqlite").verify(store=sisa_store).ok


@pytest.mark.slow
def test_kill_9_at_three_points_then_rerun_finishes_the_sisa_request(sisa_store, sisa_base,
                                                                    tmp_path):
    ids = _ids(tmp_path / "k.txt", range(300, 330))
    clean = tmp_path / "clean"
    shutil.copytree(sisa_store, clean)
    assert main(_forget(clean, sisa_base["policy"], ids)) == 0  # the run nobody killed
    args = _forget(sisa_store, sisa_base["policy"], ids)
    book = Ledger(sisa_store / "ledger.sqlite")
    shards = sisa_store / "models" / "d" / "shards"
    for point in ("started", "written", "reported"):
        crashed = _cli(*args, env={"DORMANT_FAILPOINT": point})
        assert crashed.returncode == -9, (point, crashed.stderr)
        assert book.verify(store=sisa_store).ok
        assert [e.kind for e in book.entries()][-1] in ("request-started", "request-resumed")
    # a shard checkpoint no row names (a killed run's) is swept by the rerun
    orphan = shards / ("0" * 64 + ".safetensors")
    orphan.write_bytes(b"left by a killed run")
    assert main(args) == 0
    kinds = [e.kind for e in book.entries()]
    assert kinds == ["model-added", "request-started", "request-resumed", "request-resumed",
                     "request-resumed", "request-finished"]
    assert len({e.request_id for e in book.entries()[1:]}) == 1
    assert book.verify(store=sisa_store).ok
    # on disk: exactly what the ledger names, nothing a killed run left behind
    named = {f["path"] for e in book.entries() for f in e.payload.get("files", [])}
    assert not orphan.exists()
    assert {str(p.relative_to(sisa_store)) for p in shards.iterdir()} <= named
    assert not list((sisa_store / "models").rglob(".*.tmp"))
    # and the version is the one the uninterrupted run made
    assert _files(ModelStore(sisa_store).resolve("d", 2)) == \
        _files(ModelStore(clean).resolve("d", 2))


@pytest.mark.slow
def test_a_batch_killed_after_its_first_report_resumes_every_request(sisa_store, sisa_base,
                                                                     tmp_path):
    parts = [_ids(tmp_path / f"r{i}.txt", range(400 + 10 * i, 410 + 10 * i)) for i in range(3)]
    args = _forget(sisa_store, sisa_base["policy"], *parts)
    crashed = _cli(*args, env={"DORMANT_FAILPOINT": "reported"})
    assert crashed.returncode == -9, crashed.stderr
    book = Ledger(sisa_store / "ledger.sqlite")
    started = [e.request_id for e in book.entries(kind="request-started")]
    assert len(started) == 3 and not book.entries(kind="request-finished")
    assert main(args) == 0
    assert [e.request_id for e in book.entries(kind="request-resumed")] == started
    assert [e.request_id for e in book.entries(kind="request-finished")] == started
    assert book.verify(store=sisa_store).ok


def test_sisa_bad_input_is_one_line(sisa_store, sisa_base, tmp_path, capsys):
    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "mono"), "--store",
                 str(sisa_store), "--name", "mono", "--device", "cpu"]) == 0
    ledger = sisa_store / "ledger.sqlite"
    head = Ledger(ledger).head()
    ids = _ids(tmp_path / "x.txt", [1, 2, 3])
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (_forget(sisa_store, sisa_base["policy"], ids, extra=("--method", "retrain")),
         "delete from it with --method sisa"),
        (_forget(sisa_store, sisa_base["policy"], ids, extra=("--hparam", "shards=2")),
         "drop --hparam"),
        (["forget", "--store", str(sisa_store), "--model", "mono", "--ids", str(ids),
          "--requester", "a", "--reason", "b", "--method", "sisa", "--device", "cpu"],
         "needs a SISA version"),
        (_forget(sisa_store, sisa_base["policy"], empty), "no ids files"),
        (_forget(sisa_store, sisa_base["policy"], ids, ids), "same file twice"),
        (["train", "--dataset", "digits", "--out", str(tmp_path / "t"), "--sisa", "shards=0"],
         "shards"),
        (["train", "--dataset", "digits", "--out", str(tmp_path / "t"), "--sisa", "5"],
         "--sisa takes key=value"),
    ]
    for args, words in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1 and words in err, err
    assert Ledger(ledger).head() == head


@pytest.mark.slow
def test_sisa_in_the_relearning_study_resists_like_the_oracle(tmp_path):
    """Done-when 3: ``sisa`` as a method row, its verdict computed like any other's. Its
    excess over the retrain oracle, over three seeds, is no larger than the oracle's own (its
    interval reaches 0 or lies below)."""
    from dormant.experiments.relearn import run_relearn
    from dormant.experiments.spec import RelearnSpec
    from dormant.experiments.verdicts import verdicts

    spec = RelearnSpec(dataset="digits", device="cpu", k=[0], seeds=[0, 1, 2],
                       methods=["sisa"], hparams={"sisa": {"shards": 3, "slices": 2}},
                       analysis_size=200)
    rows = run_relearn(spec, tmp_path / "out", cache_dir=tmp_path / "cache")
    sisa = [r for r in rows if r["method"] == "sisa"]
    assert len(sisa) == 3 and all(r["status"] == "ok" for r in sisa)
    # an ensemble has no weight distance or path to one model; its MIA is measured
    assert all(r["l2_to_original"] is None and r["lmc"] is None for r in sisa)
    assert all(0.0 <= r["mia_auc"] <= 1.0 for r in sisa)
    found = {v.method: v for v in verdicts(rows)}
    v = found["sisa"]
    assert v.n == 3 and v.excess_low <= 0.0, v
    assert v.verdict != "relearns"
