"""Generated scoring bodies in the four input formats (and malformed ones) through the
real gateway to the demo iris model: every answer is the model's predictions or a JSON
error, never a 5xx and never a dropped connection."""

from __future__ import annotations

import json

import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.support import iris

pytestmark = pytest.mark.any_database

SCALARS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
COLUMNS = st.one_of(
    st.just(iris.COLUMNS),
    st.lists(st.sampled_from([*iris.COLUMNS, "extra", ""]), max_size=6),
    st.lists(st.text(max_size=10), max_size=5),
)
ROWS = st.lists(st.lists(VALUES, min_size=0, max_size=6), max_size=5)


@st.composite
def dataframe_split(draw):
    body = {"columns": draw(COLUMNS), "data": draw(ROWS)}
    if draw(st.booleans()):
        body["index"] = draw(st.lists(SCALARS, max_size=5))
    return {"dataframe_split": draw(st.one_of(st.just(body), VALUES))}


@st.composite
def dataframe_records(draw):
    records = st.lists(
        st.dictionaries(st.sampled_from([*iris.COLUMNS, "other"]), VALUES, max_size=5),
        max_size=5,
    )
    return {"dataframe_records": draw(st.one_of(records, VALUES))}


@st.composite
def instances(draw):
    named = st.lists(st.dictionaries(st.text(max_size=4), VALUES, max_size=3), max_size=4)
    return {"instances": draw(st.one_of(ROWS, named, VALUES))}


@st.composite
def inputs(draw):
    named = st.dictionaries(st.text(max_size=4), VALUES, max_size=3)
    return {"inputs": draw(st.one_of(ROWS, named, VALUES))}


@st.composite
def odd_bodies(draw):
    """Several format keys at once, none, params, or the body as a JSON string (what the
    documented Python scoring client sends)."""
    keys = draw(
        st.lists(
            st.sampled_from(
                ["dataframe_split", "dataframe_records", "instances", "inputs", "params", "x"]
            ),
            max_size=3,
            unique=True,
        )
    )
    body = {key: draw(VALUES) for key in keys}
    return json.dumps(body) if draw(st.booleans()) else body


BODIES = st.one_of(dataframe_split(), dataframe_records(), instances(), inputs(), odd_bodies())


@hypothesis_settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES, stage=st.sampled_from(["Production", "Staging"]))
def test_generated_inputs_never_cause_a_server_error(live, http, body, stage):
    response = http.post(live.url(stage), json=body, headers=live.headers("querier"), timeout=60)
    assert response.status_code < 500, (body, response.status_code, response.text)
    answer = response.json()
    if response.status_code == 200:
        assert set(answer) == {"predictions"}
    else:
        assert set(answer) >= {"error_code", "message"}, answer


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
    content_type=st.sampled_from(
        ["application/json", "text/csv", "application/json; format=pandas-split", ""]
    ),
)
def test_arbitrary_bytes_never_cause_a_server_error(live, http, raw, content_type):
    headers = {**live.headers("querier"), "Content-Type": content_type}
    response = http.post(live.url(), data=raw, headers=headers, timeout=60)
    assert response.status_code < 500, (raw, content_type, response.status_code, response.text)


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:
        yield session


def test_the_fuzzed_model_answers_a_valid_request(live, http, db):
    """(Also makes the test database available when this file runs alone.)"""
    response = http.post(live.url(), json=iris.SPLIT, headers=live.headers("querier"))
    assert response.json() == {"predictions": [0]}
