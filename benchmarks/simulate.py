"""Cost of the ``simulate`` request strategy: the search's wall time (the first-order proxy,
then the real method run on the surrogate once per candidate request) next to one unlearning
run of the same method on the victim, measured back to back in this process. Prints one JSON
object with, per method, both times and their ratio (search / one unlearning run).

The victim and the surrogate come from the study's cache (built on first use, which is not
timed).

    .venv/bin/python benchmarks/simulate.py [--study configs/mnist-backdoor.yaml]
        [--data-root ../shared/datasets] [--seed 0] [--methods boundary_shrink,bad_teacher]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dormant.attacks.clean_unlearning import target_margin
from dormant.attacks.request_search import simulate_request
from dormant.data.sources import default_cache_dir
from dormant.experiments.backdoor import check_spec, prepare_victim
from dormant.experiments.backdoor_spec import BackdoorSpec
from dormant.experiments.prepare import load_study_data
from dormant.models import create_model
from dormant.settings import load_yaml
from dormant.store import ModelCache
from dormant.unlearn import UnlearnContext, UnlearnData, unlearn

ROOT = Path(__file__).resolve().parents[1]
METHODS = "bad_teacher,fisher_forgetting,boundary_shrink,boundary_expand"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", default=str(ROOT / "configs/mnist-backdoor.yaml"))
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared/datasets"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=METHODS)
    args = ap.parse_args()
    raw = {**load_yaml(Path(args.study)), "data_root": args.data_root, "seeds": [args.seed]}
    spec = BackdoorSpec(**raw)
    cache_dir = default_cache_dir()
    ds = load_study_data(spec, cache_dir)
    attack = check_spec(spec, ds)
    v = prepare_victim(spec, attack, ds, args.seed, ModelCache(cache_dir), None, cache_dir)
    att, planted = v.attacker, v.planted
    rows = torch.nonzero(torch.isin(att.victim_ids, planted.clean_pool)).flatten()
    margin = target_margin(v.surrogate, att.x[rows], attack.poison.target)
    out = {"study": Path(args.study).name, "seed": args.seed, "threads":
           torch.get_num_threads(), "methods": {}}
    for method in args.methods.split(","):
        hp = spec.method_hparams(method)
        t0 = time.perf_counter()
        found = simulate_request(
            method, hp, v.surrogate, att, rows, attack.request, planted.trigger,
            attack.poison.target, recipe=v.recipe,
            init=lambda s=None: create_model(v.mspec, seed=v.attacker_seed if s is None else s),
            seed=v.attacker_seed, margin=margin, num_classes=v.num_classes)
        search = time.perf_counter() - t0
        forget = found.ids.to(planted.x.device)
        keep = torch.ones(len(planted.y), dtype=torch.bool)
        keep[forget.cpu()] = False
        data = UnlearnData(planted.x, planted.y, forget, torch.nonzero(keep).flatten(), forget,
                           v.num_classes)
        ctx = UnlearnContext(v.recipe, lambda s=None: create_model(
            v.mspec, seed=v.seed if s is None else s), v.seed, None)
        t1 = time.perf_counter()
        unlearn(method, v.poisoned, data, ctx, **hp)
        once = time.perf_counter() - t1
        out["methods"][method] = {
            "search_seconds": round(search, 2), "proxy_seconds": round(found.proxy_seconds, 2),
            "simulations": len(found.candidates),
            "one_unlearning_seconds": round(once, 2),
            "ratio_search_to_one_run": round(search / once, 2) if once > 0 else None}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
