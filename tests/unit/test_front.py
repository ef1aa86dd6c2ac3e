"""The embedded AWS's routing rule: a SigV4 credential scope names the AWS URL a request stands for."""

from __future__ import annotations

import pytest

from localcloud.front import UnroutableRequestError, aws_url


def _auth(region: str, service: str) -> str:
    return (
        f"AWS4-HMAC-SHA256 Credential=AKID/20240101/{region}/{service}/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=abc"
    )


@pytest.mark.parametrize(
    ("region", "service", "path", "url"),
    [
        ("us-east-1", "sqs", "/", "https://sqs.us-east-1.amazonaws.com/"),
        ("eu-west-2", "dynamodb", "/", "https://dynamodb.eu-west-2.amazonaws.com/"),
        ("us-west-2", "s3", "/bucket/a/b?x=1", "https://s3.us-west-2.amazonaws.com/bucket/a/b?x=1"),
        ("us-east-1", "states", "/", "https://states.us-east-1.amazonaws.com/"),
        # Global services answer on one host whatever region signed the request.
        ("us-east-1", "iam", "/", "https://iam.amazonaws.com/"),
        ("eu-west-1", "sts", "/", "https://sts.amazonaws.com/"),
        (
            "us-east-1",
            "route53",
            "/2013-04-01/hostedzone",
            "https://route53.amazonaws.com/2013-04-01/hostedzone",
        ),
        ("us-east-1", "cloudfront", "/", "https://cloudfront.amazonaws.com/"),
        ("us-east-1", "organizations", "/", "https://organizations.amazonaws.com/"),
    ],
)
def test_the_credential_scope_names_the_aws_url(region: str, service: str, path: str, url: str) -> None:
    assert aws_url(_auth(region, service), path, "ap-south-1") == url


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "AWS AKID:signature",  # SigV2: no credential scope
        "AWS4-HMAC-SHA256 Credential=AKID/2024/us-east-1/sqs/aws4_request",  # malformed date
    ],
)
def test_an_unsigned_request_is_refused_with_the_reason(authorization: str) -> None:
    with pytest.raises(UnroutableRequestError) as raised:
        aws_url(authorization, "/", "us-east-1")
    assert str(raised.value) == (
        "the embedded AWS routes requests by their SigV4 credential scope; this one is "
        "unsigned (use a boto3/botocore client with any credentials)"
    )
