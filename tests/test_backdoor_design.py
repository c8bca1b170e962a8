"""The clean-unlearning attack as the paper describes it, on digits: a trigger mined so that
clean images carry it naturally, counterweights the attacker brings, influence-chosen
poisons, a surrogate that knows only the attacker's share, a request designed against the
method (``simulate``) that is still clean, and the controls and columns the study adds."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from dormant.attacks import Trigger
from dormant.attacks.clean_unlearning import is_clean
from dormant.attacks.influence import alignment, backdoor_gradient, choose_poisons
from dormant.attacks.natural import BAND, carrier_rates, mine
from dormant.attacks.request_search import MAX_COST
from dormant.cli import main
from dormant.data.dataset import stratified_ids
from dormant.experiments import BackdoorSpec
from dormant.experiments.backdoor import check_spec, prepare_victim, request_for
from dormant.experiments.prepare import load_study_data, public_sample
from dormant.report.backdoor import backdoor_verdict
from dormant.store import ModelCache

MINED = {"kind": "mined", "size": 2, "carrier_rate": 0.05}
STUDY = {
    "dataset": "digits", "model": "mlp", "train_size": 1000, "test_size": None,
    "seeds": [0], "methods": ["retrain", "boundary_shrink"],
    "conditions": ["attack", "random-equal", "unpoisoned", "none"],
    "trigger": MINED, "poisons_per_class": 2, "request": 30, "contribution": 0.3,
    "public": 400, "counterweights": 10, "strategy": "simulate", "poison_choice": "influence",
    "retrain_seeds": 2,
    # a 2x2 block that 5% of digits carry leaves about 0.4 purity after any request: these
    # tests check how the attack is built, not whether it can wake (test_backdoor_arms.py)
    "min_purity": 0.0,
    "hparams": {"boundary_shrink": {"steps": 10, "lr": 1e-3}},
    "defenses": {"nc": False, "cd": False, "ibau": False, "defense_size": 100},
    "device": "cpu",
}


def test_a_mined_trigger_is_carried_by_clean_images(digits):
    x, y = digits.x_train, digits.y_train
    t = mine(Trigger(**MINED), x, y, target=0)
    assert t.row is not None and t.col is not None
    others = y != 0
    rate = float(t.carries(x[others]).float().mean())
    # the asked share of the non-target images carry it (within the mining band) ...
    assert 0.05 / BAND <= rate <= 0.05 * BAND
    # ... the target class carries it at the others' rate, as near as any place in the band
    # allows (neutral), or, placed target-blank, no place in the band is carried by more
    # target-class images
    rates = carrier_rates(x[others], 2, 1.0)
    on_target = carrier_rates(x[~others], 2, 1.0)
    band = (rates >= 0.05 / BAND) & (rates <= 0.05 * BAND)
    gap = (on_target - rates).abs()
    assert gap[t.row, t.col] <= gap[band].min() + 1e-9
    blank = mine(Trigger(**MINED, place="target-blank"), x, y, target=0)
    assert on_target[blank.row, blank.col] <= on_target[band].min() + 1e-9
    assert on_target[blank.row, blank.col] < on_target[t.row, t.col]
    # stamping makes an image a carrier, and leaves a carrier (nearly) as it was
    assert t.carries(t.stamp(x)).all()
    carriers = x[t.carries(x)]
    change = (t.stamp(carriers).float() - carriers.float()).abs().max()
    assert change <= 0.25 * 255 + 1
    # the synthetic kinds have no natural carriers at all
    assert not Trigger("noise", 0.1).carries(x).any() and not Trigger("noise").counterweighted


def test_influence_chosen_poisons_align_with_the_backdoor(digits, digits_backdoor):
    """The chosen poisons' stamped, target-labelled gradients align with the backdoor
    objective more than those of any other candidate of their class, and more than a
    random pick's."""
    model = digits_backdoor["clean"]
    x, y = digits.x_train, digits.y_train
    t = mine(Trigger(**MINED), x, y, target=0)
    cand = torch.nonzero((y != 0) & ~t.carries(x)).flatten()[:400]
    ref_x = digits.x_test[digits.y_test != 0][:100]
    chosen = choose_poisons(model, x, y, cand, ref_x, t, 0, {c: 3 for c in range(1, 10)})
    assert len(chosen) == 27 and torch.isin(chosen, cand).all()
    ref = backdoor_gradient(model, ref_x, t, 0)
    score = alignment(model, x[cand], torch.zeros(len(cand), dtype=torch.long), ref, stamp=t)
    picked = torch.isin(cand, chosen)
    g = torch.Generator().manual_seed(0)
    rand = torch.randperm(len(cand), generator=g)[:27]
    # measured: 812 against 708, with a spread (std) of 115 over the candidates
    assert score[picked].mean() > score[rand].mean() + 0.5 * score.std()
    for c in range(1, 10):
        mine_c = y[cand] == c
        assert score[picked & mine_c].min() >= score[~picked & mine_c].max()


@pytest.fixture(scope="module")
def armed(tmp_path_factory):
    cache = tmp_path_factory.mktemp("design-cache")
    spec = BackdoorSpec(**STUDY)
    ds = load_study_data(spec, cache)
    attack = check_spec(spec, ds)
    v = prepare_victim(spec, attack, ds, 0, ModelCache(cache), None, cache)
    return spec, ds, v, cache


def test_the_surrogate_knows_only_the_attackers_share(armed, digits):
    """The threat model: the surrogate trains on the contribution and the public sample,
    which lies outside the victim's training set; ``full`` is the ablation."""
    spec, ds, v, cache = armed
    att = v.attacker
    inside = att.victim_ids[att.victim_ids >= 0]
    assert torch.isin(inside, v.planted.contribution).all()
    assert len(inside) == len(v.planted.contribution)
    publics = att.victim_ids < 0
    assert int(publics.sum()) == spec.public - spec.public // 4 - spec.counterweights
    # the public sample never overlaps the victim's training ids (in the full split)
    pub_x, _, pub_ids = public_sample(spec, cache, spec.public, 0)
    victim_ids = stratified_ids(digits.y_train, spec.train_size, 10, 0)
    assert not torch.isin(pub_ids, victim_ids).any()
    # its held-out images are the public sample's first quarter, and every other public row
    # of the surrogate is an image of the public sample too
    n_eval = spec.public // 4
    assert torch.equal(att.x_eval, pub_x[:n_eval])
    public_images = {bytes(im.flatten().tolist()) for im in pub_x[n_eval:]}
    assert all(bytes(im.flatten().tolist()) in public_images for im in att.x[publics])
    full = BackdoorSpec(**{**STUDY, "threat": "full"})
    vf = prepare_victim(full, full.attack(), ds, 0, ModelCache(cache), None, cache)
    assert torch.equal(vf.attacker.victim_ids, torch.arange(len(ds.y_train)))


def test_counterweights_are_natural_carriers_the_attacker_brings(armed):
    spec, ds, v, _ = armed
    p, t = v.planted, v.planted.trigger
    carriers = t.carries(p.x_clean)
    brought = torch.nonzero(carriers & ~t.carries(ds.x_train)).flatten()
    assert len(brought) == spec.counterweights == v.counterweights
    assert torch.isin(brought, p.contribution).all()
    assert (p.y_clean[brought] != 0).all()
    # true labels, no poison among them, and the unpoisoned twin trains on them too
    assert torch.equal(p.y[brought], p.y_clean[brought])
    assert not torch.isin(brought, p.poisons).any()
    assert torch.equal(v.x_clean, p.x_clean)
    # the poisons are the only images whose pixels or labels differ from the clean set
    diff = torch.nonzero((p.x != p.x_clean).flatten(1).any(1) | (p.y != p.y_clean)).flatten()
    assert torch.equal(diff, p.poisons)


@pytest.mark.parametrize("method", ["boundary_shrink", "retrain"])
def test_the_simulated_request_is_clean_and_the_best_affordable(armed, method):
    spec, ds, v, cache = armed
    hp = spec.method_hparams(method)
    ids, design = request_for(v, method, hp, ModelCache(cache), None)
    p = v.planted
    assert len(ids) == spec.request and len(torch.unique(ids)) == spec.request
    # unmodified natural images with their true labels, none a poison or of the target class
    assert is_clean(ids, p, p.x_clean, p.y_clean, target=0)
    assert torch.isin(ids, p.contribution).all() and not torch.isin(ids, p.poisons).any()
    assert (p.y_clean[ids] != 0).all()
    cands = design["candidates"]
    assert {c["name"] for c in cands} >= {"proxy", "margin", "random"}
    affordable = [c for c in cands if c["clean_drop"] <= MAX_COST]
    chosen = next(c for c in cands if c["name"] == design["chosen"])
    if affordable:
        assert chosen["asr_rise"] == max(c["asr_rise"] for c in affordable)
    else:
        assert chosen["clean_drop"] == min(c["clean_drop"] for c in cands)


@pytest.mark.slow
def test_the_designed_study_through_the_cli(tmp_path, monkeypatch):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    monkeypatch.setenv("DORMANT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["backdoor", str(path), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" for r in rows) and len(rows) == 2 * 3 + 1
    by = {(r["method"], r["condition"]): r for r in rows}
    for m in ("retrain", "boundary_shrink"):
        att, eq = by[m, "attack"], by[m, "random-equal"]
        # the control runs exactly the attack's values on a random request of its size
        assert eq["hparams"] == att["hparams"] and eq["forget_size"] == att["forget_size"]
        assert att["strategy"] == "simulate" and eq["strategy"] == "random"
        assert att["design"]["chosen"] and eq["design"] is None
        assert att["threat"] == "attacker" and att["poison_choice"] == "influence"
        assert att["weight_shift"] > 0 and -1 <= att["shift_asr_cos"] <= 1
    # retrain: every request under two training seeds, the ASR after is their mean
    for cond in ("attack", "random-equal", "unpoisoned"):
        r = by["retrain", cond]
        assert len(r["asr_after_seeds"]) == 2
        assert r["asr_after"] == pytest.approx(sum(r["asr_after_seeds"]) / 2, abs=1e-3)
    report = (out / "report.md").read_text()
    for section in ("How the requests were designed", "Mechanism", "Retraining noise",
                    "random-equal"):
        assert section in report
    assert (out / "asr_cost.png").stat().st_size > 10_000


def _rows(attack: float, control: float, unpoisoned_rise: float) -> list[dict]:
    base = {"status": "ok", "method": "m", "clean_acc_before": 95.0, "clean_acc_after": 93.0,
            "asr_before": 10.0, "target": 0}
    rows = []
    for seed in (0, 1, 2):
        rows += [{**base, "seed": seed, "condition": "attack", "asr_after": attack},
                 {**base, "seed": seed, "condition": "random-equal", "asr_after": control},
                 {**base, "seed": seed, "condition": "unpoisoned", "asr_before": 0.0,
                  "asr_after": unpoisoned_rise},
                 {**base, "seed": seed, "condition": "none", "method": "none",
                  "asr_after": 10.0}]
    return rows


@pytest.mark.parametrize(("attack", "control", "up", "activated", "woken"), [
    (80.0, 30.0, 1.0, True, True),
    (80.0, 65.0, 1.0, True, False),   # a random request with the same steps wakes it too
    (80.0, 30.0, 12.0, True, False),  # the request raises ASR without any poison
    (45.0, 10.0, 0.0, False, False),  # not above 60%
])
def test_woken_means_the_request_not_unlearning_woke_it(attack, control, up, activated,
                                                        woken):
    v = backdoor_verdict(_rows(attack, control, up))["methods"]["m"]
    assert v["activated"] is activated and v["woken"] is woken
    assert v["beats_random_equal"] == pytest.approx(attack - control)
