"""record(): the Record a gate stores in user_properties, and that recording a failure fails the test."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from pytest_blendmask.results import RECORD_KEY, Record, batch_series, layer_series, record, records_in


@dataclass
class FakeItem:
    nodeid: str = "tests/precision/test_x.py::test_gate[cpu:fp16]"
    user_properties: list[tuple[str, object]] = field(default_factory=list)


@dataclass
class FakeRequest:
    node: FakeItem = field(default_factory=FakeItem)


def test_record_appends_a_builtin_dict_to_user_properties() -> None:
    item = FakeItem()
    entry = record(item, "precision", "cpu:fp16", "relative_l2_error", np.float32(0.02), 0.1, "", True,
                   op="<=", detail="worst layer fpn.p3", first_divergent=None)
    assert item.user_properties == [(RECORD_KEY, entry)]
    assert entry == {
        "test": item.nodeid, "family": "precision", "target": "cpu:fp16", "metric": "relative_l2_error",
        "value": pytest.approx(0.02), "op": "<=", "limit": 0.1, "unit": "", "passed": True,
        "detail": "worst layer fpn.p3", "extra": {"first_divergent": None},
    }
    assert type(entry["value"]) is float  # numpy scalars would not survive xdist's serialisation


def test_the_stored_dict_is_the_typed_record_as_a_dict() -> None:
    entry = record(FakeItem(), "perf", "cpu", "latency_p50", 12, None, "ms", True, batch_size=1)
    typed = Record.from_dict(entry)
    assert (typed.value, typed.op, typed.extra) == (12.0, None, {"batch_size": 1})
    assert typed.as_dict() == entry


def test_record_accepts_a_request_and_reads_its_node() -> None:
    request = FakeRequest()
    record(request, "perf", "cpu", "latency_p50", 12, None, "ms", True)
    assert records_in(request.node.user_properties)[0]["value"] == 12.0


def test_failing_record_is_stored_then_raises_with_the_detail() -> None:
    item = FakeItem()
    with pytest.raises(AssertionError, match=r"^box error 0\.5 px > 0\.1 px$"):
        record(item, "atc", "ort", "box_max_abs_error", 0.5, 0.1, "px", False, op="<=", detail="box error 0.5 px > 0.1 px")
    assert records_in(item.user_properties)[0]["passed"] is False


def test_failing_record_without_detail_says_what_failed() -> None:
    with pytest.raises(AssertionError, match=r"^perf gate throughput on npu:0: 3\.0 img/s vs limit >= 6\.45$"):
        record(FakeItem(), "perf", "npu:0", "throughput", 3, 6.45, "img/s", False, op=">=")


@pytest.mark.parametrize(
    ("value", "op", "limit", "passed"),
    [(0.2, "<=", 0.1, True), (0.05, "<=", 0.1, False), (0.9, ">=", 0.99, True), (math.nan, "<=", 0.1, True)],
)
def test_passed_must_agree_with_value_op_and_limit(value: float, op: str, limit: float, passed: bool) -> None:
    item = FakeItem()
    with pytest.raises(ValueError, match=r"^record: passed=\w+ contradicts"):
        record(item, "precision", "cpu", "m", value, limit, "", passed, op=op)  # type: ignore[arg-type]
    assert item.user_properties == []


def test_equal_to_the_limit_passes() -> None:
    assert record(FakeItem(), "precision", "cpu", "m", 0.1, 0.1, "", True, op="<=")["passed"] is True


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"family": "accuracy"}, ValueError, r"family must be one of precision, perf, atc; got 'accuracy'"),
        ({"value": "fast"}, TypeError, r"value must be a number or None; got 'fast'"),
        ({"limit": True}, TypeError, r"limit must be a number or None; got True"),
        ({"op": "<"}, ValueError, r"op must be '<=' or '>=' or None; got '<'"),
        ({"tensor": np.zeros(2)}, TypeError, r"extra values must be builtin JSON types"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, error: type[Exception], message: str) -> None:
    args = {"family": "precision", "target": "cpu", "metric": "m", "value": 1.0, "limit": None, "unit": "",
            "passed": True, **kwargs}
    with pytest.raises(error, match=message):
        record(FakeItem(), **args)


def test_a_node_without_user_properties_is_refused() -> None:
    with pytest.raises(TypeError, match=r"has no user_properties; record from a test or a function-scoped fixture"):
        record(object(), "perf", "cpu", "m", 1.0, None, "", True)


def test_series_helpers_fix_the_plotted_shapes() -> None:
    assert layer_series(["a", "b"], [np.float64(1), 2], "b") == {"layers": ["a", "b"], "values": [1.0, 2.0], "first_divergent": "b"}
    assert batch_series([1, 2], [3, 4.5]) == {"batch_sizes": [1, 2], "latency_ms": [3.0, 4.5]}
    with pytest.raises(ValueError, match="2 layers but 1 values"):
        layer_series(["a", "b"], [1], None)
    with pytest.raises(ValueError, match="first_divergent 'c' is not one of the layers"):
        layer_series(["a", "b"], [1, 2], "c")
    with pytest.raises(ValueError, match="1 batch sizes but 2 latencies"):
        batch_series([1], [1, 2])


def test_bm_record_fixture_records_on_the_running_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_gate(bm_record):
            bm_record("precision", "cpu", "cosine_similarity", 0.5, 0.99, "", False, op=">=", detail="cosine 0.5")

        def test_after(request):
            # added at collection (no level, no target); no record
            assert request.node.user_properties == [("bm_tags", []), ("bm_level", None), ("bm_target", None)]
        """
    )
    result = pytester.runpytest("--bm-target=cpu")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: cosine 0.5"])
