"""The per-request report on a hand-built record: the verdict, every check, the before/after
numbers and their differences, the flagged classes and both figures (inline) land in
report.html and report.md; a record with a missing tamper curve and absent values still
writes, with "-" where a value is absent, and an audit names files instead of versions."""

from __future__ import annotations

import copy
import math
import re

import matplotlib.image

from dormant.report.html import data_uri
from dormant.requests.report import flagged_classes, write_request_report

NC_BEFORE = [40.0, 38.0, 42.0, 39.0, 41.0]
NC_AFTER = [39.0, 37.5, 9.0, 40.0, 40.5]  # class 2's trigger got easy: a woken backdoor
UAP_BEFORE = [10.0, 12.0, 15.0, 11.0, 9.0]
UAP_AFTER = [11.0, 12.5, 30.0, 10.0, 71.0]  # class 4 jumped


def _tamper(k: int, curve: list[float], oracle: list[float]) -> dict:
    """A block as ``checks.tamper_test`` writes it: the new model starts at 40, the retrain
    oracle at ``oracle[0]``; both ends are the last point here."""
    steps = [1, 10, 100]
    return {"k": k, "steps": steps, "forget_acc": curve, "test_steps": steps,
            "test_acc": [91.0, 91.5, 92.0], "start": 40.0, "best": max(curve), "end": curve[-1],
            "recovery": max(curve) - 40.0, "aurc": 21.25, "oracle": "a retrain",
            "oracle_start": oracle[0], "oracle_end": oracle[-1], "oracle_best": max(oracle),
            "excess": curve[-1] - oracle[-1], "excess_max": max(curve) - max(oracle),
            "forget_gap": 40.0 - oracle[0], "verdict": "relearns", "oracle_forget_acc": oracle}


def _check(name, group, value, warn, fail, status, detail, classes=()) -> dict:
    return {"name": name, "group": group, "value": value, "warn": warn, "fail": fail,
            "status": status, "detail": detail, "classes": list(classes)}


def make_record() -> dict:
    measurements = {
        "before": {"retain_acc": 99.25, "test_acc": 93.5, "forget_acc": 97.75, "mia_auc": 0.7312,
                   "nc_norms": NC_BEFORE, "uap_success": UAP_BEFORE},
        "after": {"retain_acc": 98.0, "test_acc": 92.25, "forget_acc": 40.0, "mia_auc": 0.5124,
                  "nc_norms": NC_AFTER, "uap_success": UAP_AFTER},
        "tamper": {"k0": _tamper(0, [55.0, 80.0, 95.0], [35.0, 45.0, 50.0]),
                   "k5": _tamper(5, [60.0, 90.0, 98.0], [35.0, 50.0, 60.0])},
        "budget": {"attack_steps": 100, "leaked_k": 5},
    }
    checks = [
        _check("retain_drop", "utility", 1.25, 2.0, 5.0, "pass", "retain fell 1.2 points"),
        _check("excess", "tamper", 45.0, 5.0, 10.0, "fail", "k=0: excess +45.0: relearns"),
        _check("mia_auc", "forgetting", 0.5124, 0.6, 0.7, "pass", "AUC 0.512"),
        _check("nc_shrink", "backdoor", 0.214, 0.5, 0.25, "fail", "class 2 norm x0.21", [2]),
        _check("uap_jump", "backdoor", 62.0, 20.0, 50.0, "fail", "class 4 UAP +62.0", [4]),
    ]
    return {"request_id": "req-0007", "model": "mnist-cnn", "from_version": 3, "to_version": 4,
            "method": "retrain", "hparams": {"steps": 200, "lr": 1e-05}, "requester": "alice",
            "reason": "GDPR art. 17", "ids": 120, "already_deleted": 30,
            "oracle": "a retrain on the retain set",
            "measurements": measurements, "checks": checks, "verdict": "fail", "promoted": False,
            "promotion_reason": "verdict fail: kept as v4, v3 stays promoted",
            "durations": {"unlearn": 12.345, "checks": 30.0, "total": 42.5},
            "sha256": {"original": "a" * 64, "unlearned": "b" * 64},
            "versions": {"dormant": "0.1.0", "torch": "2.4.0"}, "kind": "forget"}


def _cells(html: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    row = re.search(rf"<tr><td>{re.escape(first)}</td>(.*?)</tr>", html)
    assert row, f"no row {first!r}"
    return [first, *re.findall(r"<td>(.*?)</td>", row.group(1))]


def test_report_holds_verdict_checks_numbers_and_figures(tmp_path):
    record = make_record()
    paths = write_request_report(record, tmp_path / "rep")
    assert set(paths) == {"html", "markdown", "recovery", "nc"}
    html = paths["html"].read_text()
    md = paths["markdown"].read_text()

    assert "<em>FAIL</em>" in html and "*FAIL*" in md
    assert "Deletion request req-0007" in html and "v3 → v4" in html
    assert "Not promoted: verdict fail: kept as v4, v3 stays promoted" in html
    for c in record["checks"]:
        assert _cells(html, c["name"])[5] == c["status"].upper()
    # the failing checks are named in the verdict line, the passing ones not
    verdict_line = re.search(r"<p>Verdict:.*?</p>", html).group(0)
    assert "excess" in verdict_line and "uap_jump" in verdict_line
    assert "retain_drop" not in verdict_line
    assert _cells(html, "nc_shrink")[2:5] == ["0.214", "0.500", "0.250"]

    # before, after, after - before, formatted: accuracies 1 decimal, AUC 3
    assert _cells(html, "retain accuracy (%)")[1:] == ["99.2", "98.0", "-1.2"]
    assert _cells(html, "held-out forget accuracy (%)")[1:] == ["97.8", "40.0", "-57.8"]
    assert _cells(html, "MIA AUC (SVC)")[1:] == ["0.731", "0.512", "-0.219"]
    # the tamper table: k, start, end, the oracle's start and end, excess, forget gap, verdict;
    # then best, recovery from the own start, AURC, last test, steps
    assert _cells(html, "0") == ["0", "40.0", "95.0", "35.0", "50.0", "+45.0", "+5.0",
                                 "relearns", "95.0", "+55.0", "+21.2", "92.0", "100"]
    assert _cells(html, "5")[:8] == ["5", "40.0", "98.0", "35.0", "60.0", "+38.0", "+5.0",
                                     "relearns"]
    assert "recovery from own start" in html and "Oracle: a retrain on the retain set." in html
    assert ("k = 0: excess against the retrain oracle +45.0 points, relearns; k = 5: excess "
            "against the retrain oracle +38.0 points, relearns.") in html
    assert "recovery +" not in html  # the caption no longer headlines recovery

    # both figures inline, byte for byte, and real images
    for key in ("recovery", "nc"):
        assert data_uri(paths[key]) in html
        assert matplotlib.image.imread(paths[key]).shape[0] > 100
    assert html.count("data:image/png;base64,") == 2
    assert "recovery.png" in md and "nc_norms.png" in md

    # flagged classes: caption and NC table rows
    assert flagged_classes(record) == {"nc_shrink": [2], "uap_jump": [4]}
    assert "nc_shrink (Neural Cleanse norm shrank): class 2" in html
    assert "uap_jump (UAP success jumped): class 4" in html
    assert _cells(html, "2")[1:] == ["42.00", "9.00", "0.21", "15.0", "30.0", "+15.0",
                                     "nc_shrink"]
    assert _cells(html, "4")[-2:] == ["+62.0", "uap_jump"]
    assert _cells(html, "1")[-1] == "-"

    assert "a" * 64 in html and "b" * 64 in html
    assert _cells(html, "unlearn")[1] == "12.3" and _cells(html, "torch")[1] == "2.4.0"
    assert "`steps=200`, `lr=1e-05`" in md and "Requester: alice" in md
    assert "Ids: 120 (30 more asked for were already deleted)" in md


def test_missing_values_and_audit_wording(tmp_path):
    record = copy.deepcopy(make_record())
    m = record["measurements"]
    del m["tamper"]["k5"]
    m["after"]["mia_auc"] = None
    m["after"]["retain_acc"] = math.nan
    m["after"]["uap_success"] = None
    m["tamper"]["k0"]["aurc"] = math.nan
    # an audit of plain state dicts has no oracle, and a record from before ``end`` existed
    # gets it from its curve (the mean of its last 3 points here)
    del m["tamper"]["k0"]["end"], m["tamper"]["k0"]["oracle_forget_acc"]
    m["tamper"]["k0"].update(oracle=None, oracle_start=None, oracle_end=None, excess=None,
                             excess_max=None, forget_gap=None, verdict=None,
                             no_verdict="no oracle: no verdict")
    record["checks"][2]["value"] = None
    record["checks"][0]["warn"] = None
    # as dormant audit records it: no id, store, method or requester
    record.update(kind="audit", request_id=None, model=None, from_version=None,
                  to_version=None, method=None, hparams={}, requester=None, reason=None,
                  promoted=False, promotion_reason="an audit promotes nothing", oracle=None,
                  files={"original": "A.safetensors", "unlearned": "B.safetensors"})
    paths = write_request_report(record, tmp_path)
    html = paths["html"].read_text()

    assert _cells(html, "MIA AUC (SVC)")[1:] == ["0.731", "-", "-"]
    assert _cells(html, "retain accuracy (%)")[1:] == ["99.2", "-", "-"]
    assert _cells(html, "mia_auc")[2] == "-" and _cells(html, "retain_drop")[3] == "-"
    assert _cells(html, "0")[:8] == ["0", "40.0", "76.7", "-", "-", "-", "-",
                                     "no oracle: no verdict"]
    assert _cells(html, "0")[10] == "-"  # AURC
    assert "k = 0: no oracle: no verdict." in html and "Oracle: none, so no verdict." in html
    assert "<tr><td>5</td><td>40.0</td>" not in html  # no k5 curve
    assert "k = 5" not in html
    assert _cells(html, "4")[4:8] == ["9.0", "-", "-", "uap_jump"]

    assert "<h1>Audit</h1>" in html and "<code>B.safetensors</code> (unlearned)" in html
    assert "Unlearning method: not recorded" in html and "None" not in html
    assert "original (A.safetensors)" in html
    assert "→" not in html and "promoted" not in html.lower()
    assert html.count("data:image/png;base64,") == 2


def test_empty_measurements_give_placeholders(tmp_path):
    record = {"request_id": "r1", "model": "m", "method": "finetune", "verdict": "pass",
              "checks": [], "measurements": {}, "promoted": True, "promotion_reason": ""}
    paths = write_request_report(record, tmp_path)
    html = paths["html"].read_text()
    assert "<em>PASS</em>, every check is within the policy&#x27;s thresholds." in html
    assert "<p>Promoted.</p>" in html and "No tamper test recorded." in html
    assert all(p.stat().st_size > 0 for p in paths.values())
