"""What the API's answers look like to a test."""

from __future__ import annotations


def assert_error(response, status: int, code: str) -> dict:
    """``response`` is the API's error body, ``{"error_code", "message"}``, with ``status``."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == code
    return body
