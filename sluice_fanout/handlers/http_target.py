"""The bundled target: POST the item as JSON to the legacy API's URL."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sluice_fanout.handlers import contract
from sluice_fanout.handlers.settings import HttpTargetSettings
from sluice_fanout.handlers.target import PermanentFailure, RetryLater, TargetContext

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

DEFAULT_RETRY_AFTER_SECONDS = 5.0
HTTP_TOO_MANY_REQUESTS = 429
# Statuses that say "not now" rather than "never": request timeout, too early.
RETRYABLE_CLIENT_ERRORS = (408, 425)
# Unauthorized, forbidden: the credential was refused.
CREDENTIAL_REFUSED = (401, 403)


class HttpTargetConfigError(Exception):
    """The HTTP target's environment is incomplete."""


class CredentialRefused(PermanentFailure):
    """401 or 403: the credential is wrong; permanent unless it has just been rotated."""


class ApiUnavailable(Exception):  # noqa: N818 - reads as the condition it reports
    """The API answered 5xx, timed out or could not be reached: worth retrying."""


@dataclass(frozen=True)
class HttpTargetConfig:
    url: str
    timeout_seconds: float
    auth_header: str
    secret_arn: str | None
    ssm_parameter: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HttpTargetConfig:
        settings = HttpTargetSettings.from_env(env, HttpTargetConfigError)
        if not settings.url.startswith(("http://", "https://")):
            raise HttpTargetConfigError(
                f"{contract.ENV_HTTP_URL} must be an http(s) URL, got {settings.url!r} (set sluice:httpUrl)"
            )
        return cls(
            url=settings.url,
            timeout_seconds=settings.timeout_seconds,
            auth_header=settings.auth_header,
            secret_arn=settings.secret_arn or None,
            ssm_parameter=settings.ssm_parameter or None,
        )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would turn the POST into a body-less GET elsewhere and report its 200 as
    success: surface the 3xx instead (it is a configuration error, so a permanent failure)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # noqa: ARG002 - the base signature
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def retry_after_seconds(header: str | None) -> float:
    """Seconds from a Retry-After header given in seconds; a default when absent or a date."""
    if header is None:
        return DEFAULT_RETRY_AFTER_SECONDS
    try:
        return max(0.0, float(header))
    except ValueError:
        return DEFAULT_RETRY_AFTER_SECONDS


def post_item(
    item: Any,
    ctx: TargetContext,
    config: HttpTargetConfig,
    credential: str | None,
    opener: Callable[..., Any] = _OPENER.open,
) -> Any:
    """POST one item and map the answer to a result or one of the target exceptions.

    - 2xx: success; the JSON response body is the item's result (`{"status_code", "body"}` when
      the body is not JSON);
    - 429: RetryLater, after Retry-After seconds when the API sends it;
    - 5xx, timeouts, connection errors: retryable errors (the worker's attempt budget applies);
    - other 4xx: PermanentFailure, since resending the same request cannot succeed.
    """
    headers = {
        "Content-Type": "application/json",
        # Lets an API that supports it deduplicate retries of the same item.
        "Idempotency-Key": f"{ctx.execution}#{ctx.index}",
    }
    if credential is not None:
        headers[config.auth_header] = credential
    request = urllib.request.Request(  # noqa: S310 - scheme checked in HttpTargetConfig.from_env
        config.url, data=json.dumps(item).encode(), headers=headers, method="POST"
    )
    try:
        with opener(request, timeout=config.timeout_seconds) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == HTTP_TOO_MANY_REQUESTS:
            raise RetryLater(retry_after_seconds(exc.headers.get("Retry-After")), "HTTP 429") from exc
        if exc.code >= 500 or exc.code in RETRYABLE_CLIENT_ERRORS:
            raise ApiUnavailable(f"HTTP {exc.code} from {config.url}") from exc
        if exc.code in CREDENTIAL_REFUSED:
            raise CredentialRefused(f"HTTP {exc.code} from {config.url}: {exc.read()[:500]!r}") from exc
        raise PermanentFailure(f"HTTP {exc.code} from {config.url}: {exc.read()[:500]!r}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise ApiUnavailable(f"{type(exc).__name__} calling {config.url}: {exc}") from exc
    try:
        return json.loads(body) if body else {}
    except json.JSONDecodeError:
        return {"status_code": 200, "body": body.decode(errors="replace")[:10_000]}


def fetch_credential(config: HttpTargetConfig) -> str | None:
    """The credential from Secrets Manager or SSM (decrypted), or None when none is set.

    Never from a plain environment value; it is sent in one header (`auth_header`, Authorization
    unless configured otherwise).
    """
    import boto3  # noqa: PLC0415 - only targets with credentials need AWS clients

    if config.secret_arn:
        secret = boto3.client("secretsmanager").get_secret_value(SecretId=config.secret_arn)
        return secret["SecretString"]
    if config.ssm_parameter:
        param = boto3.client("ssm").get_parameter(Name=config.ssm_parameter, WithDecryption=True)
        return param["Parameter"]["Value"]
    return None


@lru_cache(maxsize=1)
def _configured() -> tuple[HttpTargetConfig, str | None]:
    """Read once per sandbox: the secret is fetched on the first call, not per item."""
    config = HttpTargetConfig.from_env(os.environ)
    return config, fetch_credential(config)


def call(item: Any, ctx: TargetContext) -> Any:
    config, credential = _configured()
    try:
        return post_item(item, ctx, config, credential)
    except CredentialRefused:
        if credential is None:
            raise
        # The secret may have been rotated since this sandbox read it: read it again, once, so a
        # rotation does not fail every item until the sandbox is recycled.
        _configured.cache_clear()
        config, fresh = _configured()
        if fresh == credential:
            raise
        return post_item(item, ctx, config, fresh)
