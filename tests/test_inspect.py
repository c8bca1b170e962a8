"""Provenance and random inspection (issue 23, item 7): a store model carries a data manifest
(hashed in the ledger), ``dormant inspect`` scans a seeded random sample of its training set
with the per-sample detectors and ranks contributors by their flagged share, and a request's
report names the contributors of the ids it deletes. On digits with a BadNets MLP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dormant.cli import main
from dormant.detectors import get_detector
from dormant.models import ModelSpec
from dormant.requests import Ledger, ModelStore
from dormant.requests.inspect import draw_sample, wilson
from dormant.requests.manifest import manifest_text, parse_manifest
from dormant.store import save_checkpoint


@pytest.fixture(scope="module")
def victim(digits, digits_backdoor, tmp_path_factory):
    """The BadNets digits MLP in a store with a manifest: the 144 poisons and 156 clean ids
    under ``attacker``, the rest split between ``alice`` and ``bob``; the poisoned training
    set as an npz dataset."""
    root = tmp_path_factory.mktemp("inspect")
    p = digits_backdoor["poisoned"]
    npz = root / "poisoned.npz"
    np.savez(npz, x_train=p.x.numpy(), y_train=p.y.numpy(), x_test=digits.x_test.numpy(),
             y_test=digits.y_test.numpy())
    ckpt = root / "badnets.safetensors"
    save_checkpoint(ckpt, digits_backdoor["badnets"], ModelSpec("mlp", 1, 10, 8), {"seed": 0})
    n = len(p.y)
    rest = [i for i in range(n) if i not in set(p.ids.tolist())]
    g = torch.Generator().manual_seed(1)
    rest = [rest[i] for i in torch.randperm(len(rest), generator=g).tolist()]
    owner = dict.fromkeys(p.ids.tolist() + rest[:156], "attacker")
    owner.update(dict.fromkeys(rest[156::2], "alice"))
    owner.update(dict.fromkeys(rest[157::2], "bob"))
    (root / "manifest.csv").write_text(manifest_text(owner))
    store = root / "store"
    assert main(["store", "add", str(store), "victim", str(ckpt), "--manifest",
                 str(root / "manifest.csv")]) == 0
    return {"root": root, "store": store, "data": f"npz:{npz}", "owner": owner,
            "poisons": set(p.ids.tolist()),
            "target_ids": set(torch.nonzero(p.y == 0).flatten().tolist())}


def test_the_manifest_is_kept_hashed_and_read_back(victim):
    st = ModelStore(victim["store"])
    v = st.resolve("victim")
    assert st.manifest(v) == victim["owner"]
    row = st.ledger.entries(kind="model-added")[-1].payload
    assert row["manifest"] == {"ids": len(victim["owner"]), "contributors": 3}
    assert any(f["role"] == "manifest" for f in row["files"])


@pytest.mark.parametrize("text,message", [
    ("ids,who\n1,a\n", "first line must be 'id,contributor'"),
    ("id,contributor\n1,a\n1,b\n", "id 1 is listed twice"),
    ("id,contributor\n-3,a\n", "is not a non-negative integer"),
    ("id,contributor\n1,a,b\n", "expected 'id,contributor'"),
    ("id,contributor\n", "lists no ids"),
])
def test_a_bad_manifest_is_one_line_and_adds_nothing(tmp_path, digits_backdoor, capsys, text,
                                                     message):
    bad = tmp_path / "m.csv"
    bad.write_text(text)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, digits_backdoor["clean"], ModelSpec("mlp", 1, 10, 8), {})
    assert main(["store", "add", str(tmp_path / "store"), "m", str(ckpt), "--manifest",
                 str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "store" / "models").exists()
    with pytest.raises(Exception, match=message):
        parse_manifest(text)


def test_the_sample_is_seeded_and_sized(victim):
    pool = torch.arange(1000)
    a, b = draw_sample(pool, 0.05, 3), draw_sample(pool, 0.05, 3)
    assert torch.equal(a, b) and len(a) == 50 and not torch.equal(a, draw_sample(pool, 0.05, 4))
    assert len(draw_sample(pool, 1e-6, 0)) == 1
    lo, hi = wilson(5, 50)
    # the Wilson interval of 5/50 (Brown, Cai and DasGupta 2001): 0.0435 to 0.2136
    assert math.isclose(lo, 0.0435, abs_tol=5e-4) and math.isclose(hi, 0.2136, abs_tol=5e-4)


def test_spectral_signatures_flag_the_relabelled_poisons(digits_backdoor):
    """Tran et al.'s property: in the target class, the poisons' features separate along the
    top singular direction, so the 1.5 x 5% flagged are mostly poisons."""
    p = digits_backdoor["poisoned"]
    det = get_detector("spectral")
    out = det(digits_backdoor["badnets"], p.x, p.y, p.x[:0])
    flagged0 = torch.nonzero(out.flags & (p.y == 0)).flatten()
    hit = torch.isin(flagged0, p.ids).float().mean().item()
    # measured: all 21 flagged in class 0 are poisons (144 of its 286 images)
    assert len(flagged0) == math.floor(1.5 * 0.05 * int((p.y == 0).sum()))
    assert hit >= 0.9


@pytest.mark.slow
def test_inspect_ranks_the_attacker_first(victim, capsys):
    out = victim["root"] / "report"
    assert main(["inspect", "--store", str(victim["store"]), "--model", "victim",
                 "--dataset", victim["data"], "--share", "0.5", "--seed", "0",
                 "--out", str(out), "--device", "cpu"]) == 0
    rec = json.loads((out / "inspection.json").read_text())
    assert rec["sampled"] == math.ceil(0.5 * len(victim["owner"]))
    assert {s["contributor"] for s in rec["samples"]} == {"attacker", "alice", "bob"}
    assert all(victim["owner"][s["id"]] == s["contributor"] for s in rec["samples"])
    ranks = [r["contributor"] for r in rec["contributors"]]
    assert ranks[0] == "attacker"
    # spectral signatures' property on the sample: in the target class, what it flags is
    # the poisons (CD, which fails its positive control on these small models, flags
    # poisons no more than clean images: 16 of 144 against 203 of 1,293 on the whole set)
    flagged0 = [s["id"] for s in rec["samples"] if s["spectral"] and s["id"] in
                victim["target_ids"]]
    # measured: 8 of the 9 it flags in class 0 of the 50% sample are poisons
    assert flagged0 and sum(i in victim["poisons"] for i in flagged0) >= 0.8 * len(flagged0)
    by = {r["contributor"]: r for r in rec["contributors"]}
    assert by["attacker"]["share"]["spectral"] > max(by["alice"]["share"]["spectral"],
                                                     by["bob"]["share"]["spectral"])
    assert set(rec["detectors"]) == {"cd", "spectral"}
    assert (out / "report.html").is_file() and (out / "flagged.png").is_file()
    assert "attacker" in capsys.readouterr().out


POLICY = """\
budget: {relearn_steps: 20, relearn_lr: 1.0e-3, eval_every: 5, leaked_k: 2,
         defender_images: 60, nc: {epochs: 2, batch_size: 30}, uap: {steps: 5},
         mia_size: 200}
"""


@pytest.mark.slow
def test_a_request_names_its_contributors_and_inspection_leaves_it_out(victim, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(victim["store"], store)
    (tmp_path / "policy.yaml").write_text(POLICY)
    owner = victim["owner"]
    ids = ([i for i in sorted(owner) if owner[i] == "attacker"][:12]
           + [i for i in sorted(owner) if owner[i] == "alice"][:8])
    (tmp_path / "r.ids").write_text("\n".join(map(str, ids)) + "\n")
    # v2: the same weights re-added under another manifest; the request is on v1, so its
    # version must read v1's manifest, not the latest add's
    (tmp_path / "other.csv").write_text(manifest_text(dict.fromkeys(owner, "other")))
    assert main(["store", "add", str(store), "victim", str(victim["root"] /
                 "badnets.safetensors"), "--manifest", str(tmp_path / "other.csv")]) == 0
    assert main(["forget", "--store", str(store), "--model", "victim@1", "--dataset",
                 victim["data"], "--ids", str(tmp_path / "r.ids"), "--requester", "alice",
                 "--reason", "erasure", "--policy", str(tmp_path / "policy.yaml"),
                 "--accept-warnings", "--device", "cpu"]) in (0, 1)
    st = ModelStore(store)
    rec = st.ledger.entries(kind="request-finished")[-1].payload
    assert rec["contributors"] == {"attacker": 12, "alice": 8}
    report = (store / rec["report"]).read_text()
    assert "contributed by attacker (12), alice (8)" in report
    v3 = st.resolve("victim", 3)
    assert v3.from_version == 1 and st.manifest(v3) == owner
    assert set(st.manifest(st.resolve("victim", 2)).values()) == {"other"}
    out = tmp_path / "inspect"
    assert main(["inspect", "--store", str(store), "--model", "victim@3", "--dataset",
                 victim["data"], "--share", "0.1", "--detectors", "spectral", "--out",
                 str(out), "--device", "cpu"]) == 0
    got = json.loads((out / "inspection.json").read_text())
    assert got["deleted_left_out"] == 20 and got["training_ids"] == len(owner) - 20
    assert not {s["id"] for s in got["samples"]} & set(ids)
    assert got["sampled"] == math.ceil(0.1 * (len(owner) - 20))
    assert list(got["detectors"]) == ["spectral"]


def test_a_changed_manifest_is_refused(victim, tmp_path, capsys):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(victim["store"], store)
    path = store / "models" / "victim" / "v1.manifest.csv"
    path.write_text(path.read_text().replace(",alice\n", ",attacker\n", 1))
    assert main(["inspect", "--store", str(store), "--model", "victim", "--dataset",
                 victim["data"], "--detectors", "spectral", "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was changed since the ledger recorded it" in err
    # a request on it is refused at planning: no row, nothing trained
    rows = len(Ledger(store / "ledger.sqlite").entries())
    (tmp_path / "r.ids").write_text("1\n2\n")
    assert main(["forget", "--store", str(store), "--model", "victim", "--dataset",
                 victim["data"], "--ids", str(tmp_path / "r.ids"), "--requester", "a",
                 "--reason", "b", "--device", "cpu"]) == 2
    assert "was changed since the ledger recorded it" in capsys.readouterr().err
    assert len(Ledger(store / "ledger.sqlite").entries()) == rows


def test_the_sample_does_not_repeat_another_draw_of_the_same_seed():
    """A study draws the attacker's contribution with ``randperm(n)`` under the victim's
    seed; an inspection under that seed must not sample inside it."""
    n, seed = 10_000, 10
    contribution = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:2000]
    sample = draw_sample(torch.arange(n), 0.05, seed)
    inside = torch.isin(sample, contribution).float().mean().item()
    assert 0.1 < inside < 0.3  # about the contribution's 20%, not all of it
