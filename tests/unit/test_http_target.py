"""The bundled HTTP target against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sluice_fanout.handlers import contract, http_target
from sluice_fanout.handlers.http_target import (
    ApiUnavailable,
    HttpTargetConfig,
    HttpTargetConfigError,
    fetch_credential,
    post_item,
    retry_after_seconds,
)
from sluice_fanout.handlers.target import PermanentFailure, RetryLater, TargetContext
from tests.support.legacy_api import Scripted, scripted_api

CTX = TargetContext(index=4, priority="HIGH", execution="arn:exec", receive_count=1, remaining_ms=30_000)


def config(url: str, timeout: float = 2.0) -> HttpTargetConfig:
    return HttpTargetConfig(
        url=url, timeout_seconds=timeout, auth_header="Authorization", secret_arn=None, ssm_parameter=None
    )


def test_posts_the_item_and_returns_the_json_answer() -> None:
    with scripted_api(Scripted(body=b'{"erp_id": 91}')) as api:
        assert post_item({"order": 1}, CTX, config(api.url), "Bearer s3cret") == {"erp_id": 91}
    (request,) = api.requests
    assert request["body"] == {"order": 1}
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    assert request["headers"]["Idempotency-Key"] == "arn:exec#4"


def test_a_non_json_answer_is_wrapped() -> None:
    with scripted_api(Scripted(body=b"OK")) as api:
        assert post_item({}, CTX, config(api.url), None) == {"status_code": 200, "body": "OK"}


@pytest.mark.parametrize(
    ("answer", "raised", "detail"),
    [
        (Scripted(status=429, headers={"Retry-After": "7"}), RetryLater, 7.0),
        (Scripted(status=429), RetryLater, 5.0),
        (Scripted(status=500), ApiUnavailable, "HTTP 500"),
        (Scripted(status=503), ApiUnavailable, "HTTP 503"),
        (Scripted(status=408), ApiUnavailable, "HTTP 408"),
        (Scripted(status=425), ApiUnavailable, "HTTP 425"),
        (Scripted(status=400, body=b"bad order"), PermanentFailure, "bad order"),
        (Scripted(status=404), PermanentFailure, "HTTP 404"),
        (Scripted(status=302, headers={"Location": "/elsewhere"}), PermanentFailure, "HTTP 302"),
        (Scripted(delay_s=1.0), ApiUnavailable, "calling"),
    ],
)
def test_maps_answers_to_outcomes(answer: Scripted, raised: type[Exception], detail: Any) -> None:
    with scripted_api(answer) as api, pytest.raises(raised) as caught:
        post_item({}, CTX, config(api.url, timeout=0.3), None)
    if isinstance(caught.value, RetryLater):
        assert caught.value.seconds == detail
    else:
        assert detail in str(caught.value)


def test_connection_refused_is_retryable() -> None:
    with pytest.raises(ApiUnavailable):
        post_item({}, CTX, config("http://127.0.0.1:9/none", timeout=0.5), None)


@pytest.mark.parametrize(("header", "expected"), [(None, 5.0), ("3", 3.0), ("-1", 0.0), ("Wed, 21 Oct", 5.0)])
def test_retry_after(header: str | None, expected: float) -> None:
    assert retry_after_seconds(header) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "must be an http(s) URL"),
        ({contract.ENV_HTTP_URL: "ftp://x"}, "ftp://x"),
        ({contract.ENV_HTTP_URL: "https://x", contract.ENV_HTTP_TIMEOUT_SECONDS: "soon"}, "'soon'"),
    ],
)
def test_config_errors_name_the_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(HttpTargetConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HttpTargetConfig.from_env(env)


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


def test_credential_from_secrets_manager(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    arn = boto3.client("secretsmanager").create_secret(Name="erp", SecretString="Bearer abc")["ARN"]
    cfg = HttpTargetConfig.from_env({contract.ENV_HTTP_URL: "https://x", contract.ENV_HTTP_SECRET_ARN: arn})
    assert fetch_credential(cfg) == "Bearer abc"


def test_credential_from_ssm(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("ssm").put_parameter(Name="/erp/token", Value="Bearer xyz", Type="SecureString")
    cfg = HttpTargetConfig.from_env(
        {contract.ENV_HTTP_URL: "https://x", contract.ENV_HTTP_SSM_PARAMETER: "/erp/token"}
    )
    assert fetch_credential(cfg) == "Bearer xyz"


def test_no_credential_configured() -> None:
    assert fetch_credential(HttpTargetConfig.from_env({contract.ENV_HTTP_URL: "https://x"})) is None


def test_a_refused_credential_is_read_again_once_in_case_it_was_rotated(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    secrets = boto3.client("secretsmanager")
    arn = secrets.create_secret(Name="erp", SecretString="Bearer old")["ARN"]
    with scripted_api(Scripted(body=b"{}"), Scripted(status=401), Scripted(body=b'{"ok": 1}')) as api:
        monkeypatch.setenv(contract.ENV_HTTP_URL, api.url)
        monkeypatch.setenv(contract.ENV_HTTP_SECRET_ARN, arn)
        http_target._configured.cache_clear()
        assert http_target.call({}, CTX) == {}
        secrets.put_secret_value(SecretId=arn, SecretString="Bearer new")  # rotated meanwhile
        assert http_target.call({}, CTX) == {"ok": 1}
    assert [r["headers"]["Authorization"] for r in api.requests] == ["Bearer old", "Bearer old", "Bearer new"]
    http_target._configured.cache_clear()


def test_a_credential_refused_again_after_reading_it_is_a_permanent_failure(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    arn = boto3.client("secretsmanager").create_secret(Name="erp", SecretString="Bearer bad")["ARN"]
    with scripted_api(Scripted(status=403)) as api:
        monkeypatch.setenv(contract.ENV_HTTP_URL, api.url)
        monkeypatch.setenv(contract.ENV_HTTP_SECRET_ARN, arn)
        http_target._configured.cache_clear()
        with pytest.raises(PermanentFailure, match="HTTP 403"):
            http_target.call({}, CTX)
    assert len(api.requests) == 1  # the same credential is not sent twice
    http_target._configured.cache_clear()
