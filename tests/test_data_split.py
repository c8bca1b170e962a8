"""Forget-set specs and the paper's leak/held-out split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dormant.data import make_split, parse_forget, select_forget, stratified_subset
from dormant.data.forget import canary_labels, read_ids
from dormant.errors import DormantError


def test_parse_every_spec_kind(tmp_path):
    assert parse_forget("random:50").count == 50
    assert parse_forget("class:3").cls == 3
    s = parse_forget("class:1:atypical:0.3")
    assert (s.kind, s.cls, s.frac, s.needs_scores) == ("atypical", 1, 0.3, True)
    assert parse_forget("class:0:typical:0.1").kind == "typical"
    assert parse_forget("canary:20").kind == "canary"
    assert parse_forget("ids:/x/y.txt").path.name == "y.txt"


@pytest.mark.parametrize("bad", ["", "random:", "class:x", "class:1:atypical:2",
                                 "class:1:weird:0.1", "canary:1", "everything"])
def test_bad_specs_are_one_line_errors(bad):
    with pytest.raises(DormantError) as e:
        parse_forget(bad)
    assert "\n" not in str(e.value)


@given(n=st.integers(2, 600), seed=st.integers(0, 10_000))
def test_split_is_a_permutation_with_20_percent_leakable(n, seed):
    forget = torch.arange(0, 3 * n, 3)
    s = make_split(forget, 3 * n + 5, seed)
    assert torch.equal(torch.sort(s.forget).values, forget)
    assert len(s.leakable) + len(s.heldout) == n and len(s.heldout) >= 1
    assert abs(len(s.leakable) - 0.2 * n) <= 1
    assert not torch.isin(s.retain, forget).any() and len(s.retain) == 2 * n + 5
    assert torch.equal(s.leaked(len(s.leakable)), s.leakable)


def test_split_is_seeded_and_k_is_checked():
    f = torch.arange(500)
    a, b, c = make_split(f, 1000, 43), make_split(f, 1000, 43), make_split(f, 1000, 44)
    assert torch.equal(a.forget, b.forget) and not torch.equal(a.forget, c.forget)
    assert a.hash == b.hash != c.hash
    assert len(a.leakable) == 100 and len(a.heldout) == 400  # the paper's CIFAR-10 split
    with pytest.raises(DormantError, match="pick k <= 100"):
        a.leaked(101)


def test_atypical_picks_lowest_scores_among_fitted():
    y = torch.tensor([1] * 10 + [0] * 10)
    scores = torch.linspace(0, 1, 20)
    fitted = torch.ones(20, dtype=torch.bool)
    fitted[0] = False  # the least typical was never fitted: it must not be picked
    ids = select_forget(parse_forget("class:1:atypical:0.3"), y, 2, 0, scores=scores,
                        fitted=fitted)
    assert ids.tolist() == [1, 2, 3]
    ids = select_forget(parse_forget("class:1:typical:0.2"), y, 2, 0, scores=scores,
                        fitted=fitted)
    assert ids.tolist() == [8, 9]
    assert select_forget(parse_forget("class:0"), y, 2, 0).tolist() == list(range(10, 20))
    with pytest.raises(DormantError, match="class 5 does not exist"):
        select_forget(parse_forget("class:5"), y, 2, 0)


def test_random_and_canary(digits):
    y = digits.y_train
    r = select_forget(parse_forget("random:40"), y, 10, 0)
    assert len(r) == 40 and len(torch.unique(r)) == 40
    assert torch.equal(r, select_forget(parse_forget("random:40"), y, 10, 0))
    y2, canaries = canary_labels(parse_forget("canary:25"), y, 10, 0)
    assert len(canaries) == 25
    assert (y2[canaries] != y[canaries]).all()  # every canary label is wrong
    changed = torch.nonzero(y2 != y).flatten()
    assert torch.equal(changed, canaries)


def test_ids_files(tmp_path):
    (tmp_path / "a.txt").write_text("3, 5\n7\n")
    assert read_ids(tmp_path / "a.txt", 10).tolist() == [3, 5, 7]
    np.save(tmp_path / "b.npy", np.array([1, 2], dtype=np.int64))
    assert read_ids(tmp_path / "b.npy", 10).tolist() == [1, 2]
    for text, msg in (("3 99", "out of range"), ("3 3", "more than once"),
                      ("3 x", "not an integer"), ("", "is empty")):
        (tmp_path / "c.txt").write_text(text)
        with pytest.raises(DormantError, match=msg):
            read_ids(tmp_path / "c.txt", 10)
    np.save(tmp_path / "f.npy", np.array([1.5]))
    with pytest.raises(DormantError, match="must be integers"):
        read_ids(tmp_path / "f.npy", 10)


def test_stratified_subset_keeps_class_shares(digits):
    sub = stratified_subset(digits, 500, seed=0)
    assert len(sub.y_train) == 500
    full = torch.bincount(digits.y_train) / len(digits.y_train)
    part = torch.bincount(sub.y_train) / 500
    assert (full - part).abs().max() < 0.01
    assert torch.equal(stratified_subset(digits, 500, seed=0).x_train, sub.x_train)
