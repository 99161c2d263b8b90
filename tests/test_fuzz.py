"""Property tests: arbitrary JSON never crashes the manifest reader, arbitrary values never crash the options."""

import copy
import json
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeseq.bundle import MANIFEST, parse_manifest
from edgeseq.errors import BundleError, OptionsError
from edgeseq.runtime import DecodingOptions

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_is_a_bundle_error_or_a_manifest(data):
    try:
        parse_manifest(data)
    except BundleError:
        pass


@pytest.fixture(scope="module")
def valid_manifest(bundle_factory):
    return json.loads((bundle_factory()[0] / MANIFEST).read_text())


def paths(obj, prefix=()):
    """Every (path) to a value inside nested dicts and lists."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, (*prefix, i))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_valid_manifest_with_any_field_replaced(valid_manifest, data):
    candidates = [p for p in paths(valid_manifest) if p]
    path = data.draw(st.sampled_from(candidates))
    value = data.draw(json_values)
    mutated = copy.deepcopy(valid_manifest)
    target = mutated
    for key in path[:-1]:
        target = target[key]
    if data.draw(st.booleans()) and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = value
    try:
        parse_manifest(mutated)
    except BundleError:
        pass


FIELDS = [f.name for f in fields(DecodingOptions)]


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values | st.floats(), max_size=5))
def test_any_decoding_options_are_valid_or_an_options_error(kwargs):
    try:
        DecodingOptions(**kwargs)
    except OptionsError as e:
        assert str(e).startswith("invalid decoding options: ") and "\n" not in str(e)
