"""Fuzzing the command line: generated study files, ids files, policy files and flags go to the
real CLI in-process (``dormant.cli.main``), and every outcome is either accepted or exactly
one ``error: ...`` line on stderr with exit code 2, no traceback, and nothing written.

Nothing expensive runs: study files go to ``dormant plan --step-seconds 0.001`` (it trains
nothing), and where a study or a request would start work, its first expensive call
(``execute`` of the study, ``process_batch`` of the requests, ``audit``) is replaced by one
that raises ``Accepted``: the input passed every check the CLI makes before working.

``make test`` runs 25 examples per property (derandomized, so it is repeatable);
``pytest -m fuzz`` (``make test-fuzz``) runs the same properties with 500 random examples
each. ``DORMANT_FUZZ_EXAMPLES=N`` sets the count for either.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dormant.cli import main

pytestmark = pytest.mark.fuzz

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                       HealthCheck.function_scoped_fixture,
                                                       HealthCheck.data_too_large])


class Accepted(Exception):
    """Raised instead of the first expensive call: the input passed every check."""


def _accept(*_a, **_k):
    raise Accepted


@pytest.fixture(scope="module", autouse=True)
def _no_work(tmp_path_factory):
    """One digits cache for the module, and the expensive entry points replaced."""
    import dormant.experiments.backdoor as backdoor
    import dormant.experiments.relearn as relearn
    import dormant.requests as requests

    cache = tmp_path_factory.getbasetemp() / "dormant-cache"
    cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DORMANT_CACHE", str(cache))
        mp.setattr(relearn, "execute", _accept)
        mp.setattr(backdoor, "execute", _accept)
        mp.setattr(requests, "process_batch", _accept)
        mp.setattr(requests, "audit", _accept)
        yield


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``, files by their sha256."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def run(args: list[str], cwd: Path) -> tuple[int | None, str, str]:
    """``main(args)`` in ``cwd``: (exit code, or None when accepted; stdout; stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc: int | None = main([str(a) for a in args])
            except Accepted:
                rc = None
    finally:
        os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


def check(rc: int | None, out: str, err: str, args, before: dict, after: dict) -> None:
    """The defining property: accepted, or exit 2 with one ``error:`` line; no traceback;
    after a refusal nothing was written."""
    ctx = f"args {args!r}\nexit {rc}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}"
    assert "Traceback" not in out + err, ctx
    if rc is None or rc == 0:
        return
    assert rc == 2, ctx
    lines = err.splitlines()
    assert len(lines) == 1, ctx
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 5, ctx
    assert after == before, f"a refused input changed the files: {ctx}"


@contextlib.contextmanager
def workdir():
    with tempfile.TemporaryDirectory(prefix="fuzz-") as d:
        yield Path(d)


# --- values ----------------------------------------------------------------------------

SPECIAL = ["0", "-1", "1", "2", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309",
           "-1e309", "1e-400", "9" * 30, "9" * 5000, "1e999999", "", " ", "abc", "0x10", "1_000",
           "+5", "\u0661\u0662", "5.5", "1e-5", "1e-4", "0.0", "2**64", "18446744073709551616",
           "-9223372036854775809", ",", "1,", ",,1", "\u00a0", "1e5"]
NUMBER_TEXT = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(-1000, 1000).map(str),
    st.integers(2**31, 2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)
LIST_TEXT = st.lists(NUMBER_TEXT, min_size=1, max_size=4).map(",".join)

YAML_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
    st.sampled_from(["digits", "nosuch", "finetune", "retain", "class:1", "random:5",
                     "ids:missing.txt", "1e-4", "oracle", "none", "cpu", "mlp"]),
)
YAML_VALUE = st.recursive(
    YAML_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.one_of(st.text(max_size=8), st.sampled_from(["lr", "steps", "finetune", "T"])),
        inner, max_size=3),
    max_leaves=8)
STUDY_KEYS = ["dataset", "data_root", "train_size", "test_size", "model", "forget", "methods",
              "preset", "k", "seeds", "relearn_sets", "train_steps", "unlearn_steps",
              "attack_steps", "attack_lr", "calibrate", "stop", "analysis", "lmc_points",
              "analysis_size", "device", "hparams", "train_recipe", "cscores"]
BAD_KEYS = ["datset", "K", "seed", "hparams.finetune.lr", "m\u00e9thodes", "", "1", "null"]


@st.composite
def study_text(draw) -> bytes:
    """A study file: a mapping of real and misspelt keys to values of any type, then maybe
    broken as text (duplicate key, non-UTF-8 bytes, emptied, deeply nested, binary)."""
    data = draw(st.dictionaries(st.sampled_from(STUDY_KEYS + BAD_KEYS), YAML_VALUE,
                                max_size=5))
    if draw(st.booleans()):
        data.setdefault("dataset", "digits")  # most examples reach the study's own checks
    data = {"dataset": "digits", **data} if "dataset" not in data else data
    body = yaml.safe_dump(data, allow_unicode=True, sort_keys=False).encode()
    how = draw(st.sampled_from(["as-is", "as-is", "as-is", "duplicate", "not-utf8", "empty",
                                "blank", "deep", "binary", "tag", "bom", "list", "alias"]))
    if how == "duplicate":
        body += body.splitlines(keepends=True)[0]
    elif how == "not-utf8":
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe9t\xe9",
                                                  b"\x80\x80"])) + body[cut:]
    elif how == "empty":
        body = b""
    elif how == "blank":
        body = b"# nothing but a comment\n\n   \n"
    elif how == "deep":
        depth = draw(st.sampled_from([50, 500, 5000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
        body = b"dataset: digits\nk: " + (opener * depth + "0" + closer * depth).encode()
    elif how == "binary":
        body = draw(st.binary(max_size=64))
    elif how == "tag":
        body += b"x: !!python/object/apply:os.system ['echo pwned']\n"
    elif how == "bom":
        body = b"\xef\xbb\xbf" + body
    elif how == "list":
        body = b"- dataset: digits\n- k: 5\n"
    elif how == "alias":
        body = (b"dataset: digits\na: &a [1, 2, 3]\nseeds: *a\n"
                b"train_recipe: &r {augment: none}\nhparams: {finetune: *r}\n")
    return body


# --- study files -------------------------------------------------------------------------

# each class of bad study file the issue names: refused in every run (test_named_cases)
STUDY_CASES = [
    b"dataset: digits\nhparams: {finetune: {lr: .nan}}\n",      # NaN
    b"dataset: digits\nattack_lr: [1.0e-4, .inf]\n",            # infinity
    b"dataset: digits\ntrain_size: " + b"9" * 5000 + b"\n",      # beyond int()'s 4,300 digits
    b"dataset: digits\nseeds: [0, 18446744073709551616]\n",      # beyond 64 bits
    b"dataset: digits\nlmc_points: 1000000000000000000\n",       # runs out of memory
    b"dataset: digits\nk: 5\nk: 0\n",                           # duplicate key
    b"dataset: digits\nforget: class:1:atypical:0.3 \xe9t\xe9\n",  # Latin-1, not UTF-8
    b"",                                                           # empty
    b"# a comment\n",                                             # nothing but a comment
    b"dataset: digits\nk: " + b"[" * 5000 + b"0" + b"]" * 5000,   # deep nesting
    b"- dataset: digits\n",                                       # not a mapping
    b"dataset: digits\nx: !!python/object/apply:os.system ['echo pwned']\n",  # a YAML tag
    b"\x00\x01\xfe\xff" * 8,                                    # binary
]


def _fuzz_study_file(body: bytes, command: str, *flags_: str) -> None:
    """``command`` on a study file holding ``body``: accepted, or refused in one line with
    nothing written; the file itself is never changed."""
    with workdir() as d:
        study = d / "study.yaml"
        study.write_bytes(body)
        before = _snapshot(d)
        args = [command, study, *flags_]
        rc, out, err = run(args, d)
        check(rc, out, err, (body[:300], args), before, _snapshot(d))
        assert study.read_bytes() == body


@FUZZ
@given(body=study_text())
def test_fuzz_study_file_through_plan(body: bytes) -> None:
    _fuzz_study_file(body, "plan", "--step-seconds", "0.001")


@FUZZ
@given(body=study_text())
def test_fuzz_study_file_through_relearn(body: bytes) -> None:
    _fuzz_study_file(body, "relearn", "--device", "cpu", "--no-analysis")


# --- flags -------------------------------------------------------------------------------

RELEARN_FLAGS = ["--train-size", "--test-size", "--train-steps", "--unlearn-steps",
                 "--lmc-points", "--analysis-size"]
RELEARN_LISTS = ["--k", "--seeds", "--attack-steps", "--attack-lr"]
BACKDOOR_FLAGS = ["--train-size", "--test-size", "--train-steps", "--amplitude",
                  "--trigger-size", "--target", "--poisons", "--request", "--match-budget"]
BACKDOOR_LISTS = ["--seeds"]


@st.composite
def flag_args(draw, scalars: list[str], lists: list[str]) -> list[str]:
    names = draw(st.lists(st.sampled_from(scalars + lists), min_size=1, max_size=3,
                          unique=True))
    return [f"{n}={draw(LIST_TEXT if n in lists else NUMBER_TEXT)}" for n in names]


RELEARN_CASES = [["--attack-lr=nan"], ["--lmc-points=10" + "0" * 20], ["--lmc-points=1000000000"],
                 ["--seeds=0,18446744073709551616"], ["--k=-1"], ["--train-size=1000000000000"],
                 ["--attack-steps=1e309"], ["--analysis-size=0"]]


def _fuzz_study(command: str, extra: list[str], *fixed: str) -> None:
    """``command`` on digits with ``fixed`` then the drawn ``extra`` flags: accepted, or one
    error line, exit 2 and nothing written."""
    with workdir() as d:
        args = [command, "--dataset", "digits", "--methods", "finetune", "--device", "cpu",
                *fixed, "--out", d / "out", *extra]
        rc, out, err = run(args, d)
        check(rc, out, err, args, {}, _snapshot(d))


@FUZZ
@given(extra=flag_args(RELEARN_FLAGS, RELEARN_LISTS))
def test_fuzz_relearn_flags(extra: list[str]) -> None:
    _fuzz_study("relearn", extra, "--no-analysis")


BACKDOOR_CASES = [["--amplitude=nan"], ["--amplitude=inf"], ["--poisons=18446744073709551616"],
                  ["--request=1000000000000"], ["--match-budget=-inf"]]


@FUZZ
@given(extra=flag_args(BACKDOOR_FLAGS, BACKDOOR_LISTS))
def test_fuzz_backdoor_flags(extra: list[str]) -> None:
    # digits trains on its whole split: no public sample, so no counterweights either;
    # without these every draw would stop at that first check
    _fuzz_study("backdoor", extra, "--scans", "none", "--public", "0", "--counterweights", "0")


@FUZZ
@given(workers=LIST_TEXT, step=NUMBER_TEXT)
def test_fuzz_plan_flags(workers: str, step: str) -> None:
    with workdir() as d:
        study = d / "study.yaml"
        study.write_text("dataset: digits\nseeds: [0, 1]\n")
        before = _snapshot(d)
        args = ["plan", study, f"--workers={workers}", f"--step-seconds={step}"]
        rc, out, err = run(args, d)
        check(rc, out, err, args, before, _snapshot(d))


# --- ids and policy files through forget and audit ---------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store holding a digits MLP (5 training steps) as ``digits`` v1."""
    root = tmp_path_factory.mktemp("fuzz-store")
    rc, out, err = run(["train", "--dataset", "digits", "--steps", "5", "--device", "cpu",
                        "--out", root / "train", "--store", root / "store", "--name",
                        "digits"], root)
    assert rc == 0, out + err
    return root / "store"


ID_TOKEN = st.one_of(
    st.integers(0, 1796).map(str), st.integers(-5, 5).map(str),
    st.integers(1797, 10**30).map(str), st.sampled_from(SPECIAL), st.text(max_size=5),
    st.just("9" * 5000), st.just("1.0"), st.just("0x1"))


@st.composite
def ids_body(draw) -> tuple[str, bytes]:
    """(suffix, content) of an ids file: separated tokens (some garbage), duplicates,
    non-UTF-8 or binary bytes, empty, or a .npy of any dtype or a damaged one."""
    how = draw(st.sampled_from(["text", "text", "text", "dup", "not-utf8", "binary", "empty",
                                "npy", "npy-bad", "npy-object"]))
    if how in ("text", "dup", "not-utf8"):
        tokens = draw(st.lists(ID_TOKEN, min_size=1, max_size=6))
        if how == "dup":
            tokens.append(tokens[0])
        sep = draw(st.sampled_from(["\n", ",", " ", ", ", "\r\n", "\t"]))
        body = sep.join(tokens).encode()
        if how == "not-utf8":
            body += b"\n\xff\xfe1\n"
        return ".txt", body
    if how == "binary":
        return draw(st.sampled_from([".txt", ".ids", ""])), draw(st.binary(max_size=64))
    if how == "empty":
        return ".txt", draw(st.sampled_from([b"", b"\n\n", b"   ", b",,,"]))
    buf = io.BytesIO()
    if how == "npy":
        dtype = draw(st.sampled_from(["int64", "int8", "uint64", "float32", "bool", "U3"]))
        values = draw(st.lists(st.integers(-3, 3000), max_size=5))
        np.save(buf, np.array(values).astype(dtype))
        return ".npy", buf.getvalue()
    if how == "npy-object":
        np.save(buf, np.array([1, "a", None], dtype=object), allow_pickle=True)
        return ".npy", buf.getvalue()
    np.save(buf, np.arange(4))
    raw = buf.getvalue()
    return ".npy", raw[:draw(st.integers(0, len(raw) - 1))] + draw(st.binary(max_size=8))


def _forget_args(store: Path, d: Path, ids: Path, *extra) -> list:
    return ["forget", "--store", store, "--model", "digits", "--ids", ids, "--requester",
            "alice", "--reason", "fuzz", "--device", "cpu", *extra]


IDS_CASES = [(".txt", b"1\n2\n\xff\xfe3\n"), (".txt", b"1\n" + b"9" * 5000),
             (".txt", b"-1\n2\n"), (".txt", b"3\n3\n"), (".txt", b"1e3\n"), (".txt", b""),
             (".txt", b"99999999999999999999\n"), (".npy", b"\x93NUMPY garbage"),
             (".npy", b""), (".txt", b"\x00\x01\x02")]


@FUZZ
@given(ids=ids_body())
def test_fuzz_ids_file_through_forget(store: Path, ids: tuple[str, bytes]) -> None:
    suffix, body = ids
    with workdir() as d:
        path = d / f"request{suffix}"
        path.write_bytes(body)
        before = _snapshot(store) | {"ids": _snapshot(d)}
        args = _forget_args(store, d, path)
        rc, out, err = run(args, d)
        check(rc, out, err, (body[:200], args), before, _snapshot(store) | {"ids": _snapshot(d)})


@FUZZ
@given(ids=ids_body())
def test_fuzz_ids_file_through_audit(ids: tuple[str, bytes]) -> None:
    suffix, body = ids
    with workdir() as d:
        path = d / f"forget{suffix}"
        path.write_bytes(body)
        for name in ("a.safetensors", "b.safetensors"):
            (d / name).write_bytes(b"not read before the ids are")
        before = _snapshot(d)
        args = ["audit", "--original", d / "a.safetensors", "--unlearned", d / "b.safetensors",
                "--ids", path, "--out", d / "report", "--device", "cpu"]
        rc, out, err = run(args, d)
        check(rc, out, err, (body[:200], args), before, _snapshot(d))


POLICY_KEYS = ["utility", "forgetting", "tamper", "backdoor", "retain_drop", "test_drop",
               "warn", "fail", "mia_auc", "excess", "uap", "nc", "promote"]


@st.composite
def policy_body(draw) -> bytes:
    data = draw(st.dictionaries(st.sampled_from(POLICY_KEYS + BAD_KEYS), YAML_VALUE,
                                max_size=4))
    body = yaml.safe_dump(data, allow_unicode=True).encode() if data else b""
    how = draw(st.sampled_from(["as-is", "as-is", "duplicate", "not-utf8", "binary", "real"]))
    if how == "duplicate" and body:
        body += body.splitlines(keepends=True)[0]
    elif how == "not-utf8":
        body = b"\xff" + body
    elif how == "binary":
        body = draw(st.binary(max_size=64))
    elif how == "real":
        real = Path(__file__).resolve().parents[1] / "configs" / "policy.yaml"
        lines = real.read_bytes().splitlines(keepends=True)
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        bad = draw(st.sampled_from([b"", b".nan", b"-1", b"1e999", b"abc", b"[1, 2]", b"{}"]))
        head, sep, _ = lines[i].partition(b":") if lines else (b"", b"", b"")
        if sep and not head.lstrip().startswith(b"#"):
            lines[i] = head + b": " + bad + b"\n"
        body = b"".join(lines)
    return body


@pytest.mark.parametrize("workers", ["1000000000000", "0", "1,-1", "nan", "1e3"])
def test_named_bad_plan_workers_are_refused(workers: str, tmp_path: Path) -> None:
    """``--workers 10^12`` once allocated a clock per worker and was killed for memory."""
    study = tmp_path / "study.yaml"
    study.write_text("dataset: digits\n")
    before = _snapshot(tmp_path)
    rc, out, err = run(["plan", study, "--step-seconds", "0.001", f"--workers={workers}"],
                       tmp_path)
    _refused(rc, out, err, before, _snapshot(tmp_path), workers)


POLICY_CASES = [b"\xffutility: 1\n", b"tamper: {excess_warn: .nan}\n", b"- 1\n",
                b"a: 1\na: 2\n", b"x: " + b"[" * 3000 + b"]" * 3000]


@FUZZ
@given(body=policy_body())
def test_fuzz_policy_file_through_forget(store: Path, body: bytes) -> None:
    with workdir() as d:
        ids = d / "request.txt"
        ids.write_text("1\n2\n3\n")
        policy = d / "policy.yaml"
        policy.write_bytes(body)
        before = _snapshot(store) | {"work": _snapshot(d)}
        args = _forget_args(store, d, ids, "--policy", policy)
        rc, out, err = run(args, d)
        check(rc, out, err, (body[:300], args), before,
              _snapshot(store) | {"work": _snapshot(d)})


@FUZZ
@given(train_size=NUMBER_TEXT, seed=NUMBER_TEXT,
       hparam=st.tuples(st.sampled_from(["steps", "lr", "batch_size", "x", ""]), NUMBER_TEXT))
def test_fuzz_forget_flags(store: Path, train_size: str, seed: str, hparam) -> None:
    with workdir() as d:
        ids = d / "request.txt"
        ids.write_text("1\n2\n3\n")
        before = _snapshot(store) | {"work": _snapshot(d)}
        args = _forget_args(store, d, ids, "--method", "finetune", f"--train-size={train_size}",
                            f"--seed={seed}", f"--hparam={hparam[0]}={hparam[1]}")
        rc, out, err = run(args, d)
        check(rc, out, err, args, before, _snapshot(store) | {"work": _snapshot(d)})


# --- the classes the issue names: each refused, in one line, nothing written ------------

def _refused(rc, out: str, err: str, before: dict, after: dict, what) -> None:
    ctx = f"{what!r}\nexit {rc}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}"
    assert rc == 2 and "Traceback" not in out + err, ctx
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), ctx
    assert len(lines[0]) < 400, f"an error line of {len(lines[0])} characters: {ctx}"
    assert after == before, f"a refused input changed the files: {ctx}"


@pytest.mark.parametrize("command", ["plan", "relearn"])
@pytest.mark.parametrize("body", STUDY_CASES, ids=range(len(STUDY_CASES)))
def test_named_bad_study_files_are_refused(command: str, body: bytes, tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_bytes(body)
    before = _snapshot(tmp_path)
    extra = ["--step-seconds", "0.001"] if command == "plan" else ["--device", "cpu"]
    rc, out, err = run([command, study, *extra], tmp_path)
    _refused(rc, out, err, before, _snapshot(tmp_path), body[:200])


@pytest.mark.parametrize("extra", [("relearn", c) for c in RELEARN_CASES]
                         + [("backdoor", c) for c in BACKDOOR_CASES]
                         # a 5,000-digit value is cut in the error line, not echoed whole
                         + [("relearn", ["--attack-steps=" + "9" * 5000])],
                         ids=lambda e: f"{e[0]}{e[1][0][:30]}")
def test_named_bad_flags_are_refused(extra, tmp_path: Path) -> None:
    command, flags_ = extra
    rc, out, err = run([command, "--dataset", "digits", "--device", "cpu", "--out",
                        tmp_path / "out", *flags_], tmp_path)
    _refused(rc, out, err, {}, _snapshot(tmp_path), flags_)


@pytest.mark.parametrize("ids", IDS_CASES, ids=range(len(IDS_CASES)))
def test_named_bad_ids_files_are_refused(store: Path, ids, tmp_path: Path) -> None:
    path = tmp_path / f"request{ids[0]}"
    path.write_bytes(ids[1])
    before = _snapshot(store) | {"work": _snapshot(tmp_path)}
    rc, out, err = run(_forget_args(store, tmp_path, path), tmp_path)
    _refused(rc, out, err, before, _snapshot(store) | {"work": _snapshot(tmp_path)}, ids)


@pytest.mark.parametrize("body", POLICY_CASES, ids=range(len(POLICY_CASES)))
def test_named_bad_policy_files_are_refused(store: Path, body: bytes, tmp_path: Path) -> None:
    ids = tmp_path / "request.txt"
    ids.write_text("1\n2\n3\n")
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(body)
    before = _snapshot(store) | {"work": _snapshot(tmp_path)}
    rc, out, err = run(_forget_args(store, tmp_path, ids, "--policy", policy), tmp_path)
    _refused(rc, out, err, before, _snapshot(store) | {"work": _snapshot(tmp_path)}, body)


# --- bugs fuzzing found: each the smallest input that showed it ---------------------------

def test_typer_usage_error_is_one_line(tmp_path: Path) -> None:
    """click's usage errors (a value typer parses itself, an unknown option) were a
    multi-line 'Usage:' panel; they are one line naming the command's --help."""
    rc, out, err = run(["relearn", "--dataset", "digits", "--train-size=abc"], tmp_path)
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "--train-size" in err and "dormant relearn --help" in err
    for args in (["relearn", "--no-such-flag"], ["no-such-command"], ["plan"]):
        rc, out, err = run(args, tmp_path)
        assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
