"""Values stored as JSON text, pickle bytes or a spilled file decode to what was encoded."""

from __future__ import annotations

import json

import pytest

from gigq_mp.serialize import decode_value, decode_values, encode_ids, encode_result
from gigq_mp.tracking import decode_id_lists, decode_ids


@pytest.mark.timeout(30)
def test_decode_values_gives_what_decode_value_gives_each_in_order(tmp_path):
    values = [1, "two", None, {"three": [3.5, True]}, {1, 2}, b"\x00bytes", [], "x" * 10, bytearray(2_000_000)]
    stored = [encode_result(v, str(tmp_path / f"{i}.pickle")) for i, v in enumerate(values)]
    stored.append((None, None, None))  # nothing stored: None
    for kind in range(3):  # some of each: JSON text, pickle bytes, a spilled file
        assert any(s[kind] is not None for s in stored)
    expected = [decode_value(*s) for s in stored]
    assert decode_values(stored) == expected == values + [None]
    assert decode_values(stored[:1]) == [1] and decode_values([]) == []


@pytest.mark.timeout(30)
def test_decode_values_refuses_a_malformed_text_as_decode_value_does():
    stored = [("1", None, None), ("{not json", None, None)]
    with pytest.raises(json.JSONDecodeError):
        decode_value(*stored[1])
    with pytest.raises(json.JSONDecodeError):
        decode_values(stored)


@pytest.mark.timeout(30)
def test_lists_of_job_ids_encode_as_json_dumps_does_and_decode_back():
    lists = [[], ["a"], ['quote"d', "back\\slash", "é-ünïcode", "tab\there"], ["x", "y", "z"], [7, "mixed"]]
    for ids in lists:
        assert encode_ids(ids) == json.dumps(ids)
    texts = [encode_ids(ids) for ids in lists[:4]] + [None, "[]"]
    assert decode_id_lists(texts) == [decode_ids(t) for t in texts] == lists[:4] + [[], []]
    assert decode_id_lists(texts[1:2]) == [["a"]]
