"""Static files are served straight from ``static/`` by WhiteNoise, with no collected
directory to look for."""

from __future__ import annotations

import warnings

from whitenoise.middleware import WhiteNoiseMiddleware


def test_static_files_are_served_from_static_and_nothing_is_missing():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        middleware = WhiteNoiseMiddleware(lambda request: None)
    assert [str(w.message) for w in caught] == []
    assert {"/static/htmx.min.js", "/static/serving.css"} <= set(middleware.files)
