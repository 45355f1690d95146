"""raise_for_status: every status the service sends maps to one class of the client's error tree."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from near_client import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NearClientError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    raise_for_status,
)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, BadRequestError),
        (429, RateLimitedError),
        (500, ServerError),
        (502, ServiceUnavailableError),
        (503, ServiceUnavailableError),
        (504, ServiceUnavailableError),
        (418, APIError),
    ],
)
def test_status_maps_to_class_with_code_and_message(status: int, cls: type[APIError]) -> None:
    response = httpx.Response(status, json={"error": {"code": "some_code", "message": "what went wrong"}})
    with pytest.raises(cls) as info:
        raise_for_status(response)
    err = info.value
    assert type(err) is cls and isinstance(err, NearClientError)
    assert (err.status_code, err.code, err.message) == (status, "some_code", "what went wrong")
    assert str(err) == f"{status} some_code: what went wrong"


@pytest.mark.parametrize("status", [200, 201, 204, 304, 399])
def test_below_400_is_no_error_whatever_the_body(status: int) -> None:
    # the status decides, not an error-shaped body
    response = httpx.Response(status, json={"error": {"code": "some_code", "message": "what went wrong"}})
    assert raise_for_status(response) is None


def test_body_that_is_not_ours() -> None:
    with pytest.raises(ServiceUnavailableError) as info:
        raise_for_status(httpx.Response(502, text="<html>Bad Gateway</html>"))
    assert info.value.code == "http_502" and "Bad Gateway" in info.value.message
    with pytest.raises(NotFoundError, match="Not Found"):
        raise_for_status(httpx.Response(404, json={"detail": "Not Found"}))


def test_retry_after_seconds_and_date() -> None:
    with pytest.raises(RateLimitedError) as info:
        raise_for_status(httpx.Response(429, headers={"Retry-After": "3"}, json={}))
    assert info.value.retry_after == 3.0
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    with pytest.raises(ServiceUnavailableError) as info2:
        raise_for_status(httpx.Response(503, headers={"Retry-After": date}, json={}))
    assert info2.value.retry_after is not None and 25 < info2.value.retry_after <= 31
