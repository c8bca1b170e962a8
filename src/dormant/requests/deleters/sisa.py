"""Exact deletion from a SISA version: retrain each shard that held a deleted id from the
checkpoint before its earliest affected slice (``dormant.unlearn.sisa``). Only it can delete
from a SISA version (any other method would leave a model without the shards the next
deletion needs), and it needs one. Its shards never saw the ids (tested bit for bit), so the
new version is its own tamper oracle. Shards, slices and aggregate were fixed when the
version was trained, so a request takes no ``--hparam``."""

from __future__ import annotations

import time

from dormant.errors import DormantError
from dormant.requests.deleters.base import Deleter, Job, Made, register_deleter
from dormant.requests.sharded import (
    added_parts,
    initialiser,
    is_sisa,
    read_sisa,
    sisa_block,
    write_parts,
)
from dormant.requests.version import Version
from dormant.unlearn.sisa import forget, side_by_side


class Sisa(Deleter):
    name = "sisa"
    methods = ("sisa",)
    catch_all = False
    exact = True
    needs_claim = True

    def claims(self, base: Version) -> bool:
        return is_sisa(base)

    def unfit(self, base: Version, method: str) -> str:
        if is_sisa(base):
            return (f"{base.name} v{base.version} is a SISA ensemble; delete from it with "
                    f"--method sisa (the default), not {method}")
        return (f"--method sisa needs a SISA version, and {base.name} v{base.version} is one "
                "model; train one with dormant train --sisa")

    def check_overrides(self, overrides: dict) -> None:
        if overrides:
            raise DormantError("a SISA version's shards, slices and aggregate were fixed when "
                               "it was trained; drop --hparam")

    def settings(self, method: str, overrides: dict, preset: str | None, base: Version,
                 n_train: int) -> dict:
        return {k: base.sisa["plan"][k] for k in ("shards", "slices", "aggregate")}

    def added_parts(self, store, name: str, version: int, checkpoint, side: dict
                    ) -> tuple[list[dict], dict]:
        return added_parts(store, name, version, checkpoint, side)

    def run(self, job: Job) -> Made:
        base, data = job.base, job.data
        t0 = time.perf_counter()
        init = initialiser(job.spec)
        after, done = forget(read_sisa(job.store, base, len(data.y)), data.x, data.y,
                             data.forget.cpu(), init, progress=job.ctx.progress,
                             workers=side_by_side(job.device, base.sisa["plan"]["shards"]))
        new = after.ensemble(init, job.device)
        job.stage(f"retrained {len(done.stages)} of {after.plan.shards} shards: " + ", ".join(
            f"shard {s} from slice {r}" for s, r in sorted(done.stages.items())))
        full = base.sisa.get("full_retrain_seconds")

        def write(store, name: str, version: int) -> tuple[list[dict], dict]:
            files = write_parts(store, name, version, after)
            return files, {"sisa": sisa_block(after, files, {
                "full_retrain_seconds": full, "retrain_seconds": round(done.seconds, 3),
                "steps": done.steps, "retrained": [
                    {"shard": s, "from_slice": r} for s, r in sorted(done.stages.items())]})}

        return Made(new, time.perf_counter() - t0, full, write)


register_deleter(Sisa())
