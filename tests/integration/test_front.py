"""The embedded AWS's front door (localcloud/front.py): an HTTP server and an in-process botocore
hook in front of moto's backends, and the patches that take moto's scans off each request.

What this cannot prove: AWS's endpoints, TLS, signature checks or IAM (moto checks none).
"""

from __future__ import annotations

import http.client
import inspect
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from botocore.awsrequest import AWSPreparedRequest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core import utils as moto_utils
from moto.core.base_backend import BackendDict
from moto.moto_api._internal.models import moto_api_backend
from moto.sqs.models import sqs_backends
from moto.sqs.responses import SQSResponse

from localcloud import front
from localcloud.front import EmbeddedAwsClosedError, FrontServer, InProcess, dispatch, lean_request_path
from tests.support.clients import REGION, client, dead_endpoint

pytestmark = pytest.mark.slow

UNSIGNED = (
    "the embedded AWS routes requests by their SigV4 credential scope; this one is "
    "unsigned (use a boto3/botocore client with any credentials)"
)


@pytest.fixture
def fresh_backends() -> Iterator[None]:
    moto_api_backend.reset()
    yield
    moto_api_backend.reset()


@pytest.fixture
def server(fresh_backends: None) -> Iterator[FrontServer]:
    started = FrontServer(REGION).start()
    yield started
    started.stop()


def test_the_server_listens_on_loopback_only(server: FrontServer) -> None:
    assert server.server_address[0] == "127.0.0.1"
    assert server.endpoint == f"http://127.0.0.1:{server.server_address[1]}"


def test_a_boto3_client_uses_sqs_through_the_server(server: FrontServer) -> None:
    sqs = client("sqs", server.endpoint)
    url = sqs.create_queue(QueueName="front-q")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in messages] == ["hello"]
    # The state lives in moto's backend of this process, in the region of the credential scope.
    assert list(sqs_backends[DEFAULT_ACCOUNT_ID][REGION].queues) == ["front-q"]


def test_a_boto3_client_uses_dynamodb_through_the_server(server: FrontServer) -> None:
    ddb = client("dynamodb", server.endpoint)
    ddb.create_table(
        TableName="front-t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.put_item(TableName="front-t", Item={"pk": {"S": "a"}, "n": {"N": "7"}})
    assert ddb.get_item(TableName="front-t", Key={"pk": {"S": "a"}})["Item"] == {
        "pk": {"S": "a"},
        "n": {"N": "7"},
    }


def test_a_boto3_client_uses_s3_through_the_server(server: FrontServer) -> None:
    s3 = client("s3", server.endpoint)
    s3.create_bucket(Bucket="front-b")
    s3.put_object(Bucket="front-b", Key="dir/obj.json", Body=b'{"x": 1}')
    assert s3.get_object(Bucket="front-b", Key="dir/obj.json")["Body"].read() == b'{"x": 1}'
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="front-b")["Contents"]] == ["dir/obj.json"]


def test_head_object_reports_the_objects_length_through_the_server(server: FrontServer) -> None:
    s3 = client("s3", server.endpoint)
    s3.create_bucket(Bucket="front-head")
    s3.put_object(Bucket="front-head", Key="obj", Body=b"12345678")
    assert s3.head_object(Bucket="front-head", Key="obj")["ContentLength"] == 8


def test_head_object_reports_the_objects_length_in_process(fresh_backends: None) -> None:
    s3 = InProcess(REGION).attach(client("s3", dead_endpoint()))
    s3.create_bucket(Bucket="front-head")
    s3.put_object(Bucket="front-head", Key="obj", Body=b"12345678")
    assert s3.head_object(Bucket="front-head", Key="obj")["ContentLength"] == 8


def _raw(server: FrontServer, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=2)
    try:
        conn.request("POST", "/", body=b"Action=ListQueues", headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_an_unsigned_request_gets_400_with_the_reason(server: FrontServer) -> None:
    assert _raw(server, {"Content-Type": "application/x-www-form-urlencoded"}) == (400, UNSIGNED.encode())


def test_a_service_moto_lacks_gets_404(server: FrontServer) -> None:
    auth = "AWS4-HMAC-SHA256 Credential=ak/20240101/us-east-1/nosuchservice/aws4_request, Signature=x"
    status, _ = _raw(server, {"Authorization": auth})
    assert status == 404


def test_dispatch_refuses_an_unsigned_request_without_reaching_moto() -> None:
    request = AWSPreparedRequest("POST", "http://127.0.0.1:1/", {}, b"", False)
    with mock.patch.object(front.botocore_stubber, "process_request") as process:
        assert dispatch(request, REGION) == (400, {}, UNSIGNED)
    process.assert_not_called()


def test_in_process_answers_from_the_backends_without_a_socket(fresh_backends: None) -> None:
    route = InProcess(REGION)
    sqs = route.attach(client("sqs", dead_endpoint()))
    url = sqs.create_queue(QueueName="in-process")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="no socket")
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url)["Messages"]] == ["no socket"]


def test_in_process_uploads_a_file_like_body(fresh_backends: None, tmp_path: Any) -> None:
    route = InProcess(REGION)
    s3 = route.attach(client("s3", dead_endpoint()))
    s3.create_bucket(Bucket="in-process-b")
    path = tmp_path / "payload.bin"
    path.write_bytes(b"0123456789" * 100)
    with path.open("rb") as body:
        s3.put_object(Bucket="in-process-b", Key="k", Body=body)
    assert s3.get_object(Bucket="in-process-b", Key="k")["Body"].read() == b"0123456789" * 100


def test_a_closed_in_process_route_refuses_and_sends_nothing(fresh_backends: None) -> None:
    route = InProcess(REGION)
    sqs = route.attach(client("sqs", dead_endpoint()))
    sqs.create_queue(QueueName="before-close")
    route.open = False
    with mock.patch.object(front, "dispatch", wraps=front.dispatch) as sent:
        with pytest.raises(EmbeddedAwsClosedError, match=r"the embedded AWS is closed; .* was not sent"):
            sqs.create_queue(QueueName="after-close")
        sent.assert_not_called()
    assert list(sqs_backends[DEFAULT_ACCOUNT_ID][REGION].queues) == ["before-close"]


# ---- lean_request_path ----------------------------------------------------------------------


def _getmembers_of_responses(getmembers: mock.MagicMock) -> int:
    return sum(
        1
        for call in getmembers.call_args_list
        if inspect.isclass(call.args[0]) and issubclass(call.args[0], SQSResponse)
    )


def test_a_second_request_skips_the_backend_scan_and_the_method_listing(fresh_backends: None) -> None:
    # Wrapped before the patch, so the patch's "original" is the counter.
    with (
        mock.patch.object(
            BackendDict,
            "_create_account_specific_backend",
            autospec=True,
            side_effect=BackendDict._create_account_specific_backend,
        ) as slow_path,
        mock.patch.object(moto_utils.inspect, "getmembers", wraps=inspect.getmembers) as getmembers,
        lean_request_path(),
    ):
        sqs = InProcess(REGION).attach(client("sqs", dead_endpoint()))
        sqs.list_queues()
        assert slow_path.call_count >= 1  # the first request registers the account
        assert _getmembers_of_responses(getmembers) == 1
        slow_path.reset_mock()
        getmembers.reset_mock()
        sqs.list_queues()
        sqs.create_queue(QueueName="second")
        assert slow_path.call_count == 0
        assert _getmembers_of_responses(getmembers) == 0


def test_after_a_reset_the_backend_registers_again_and_starts_empty(fresh_backends: None) -> None:
    with lean_request_path():
        sqs = InProcess(REGION).attach(client("sqs", dead_endpoint()))
        sqs.create_queue(QueueName="before-reset")
        assert sqs_backends in BackendDict._instances
        moto_api_backend.reset()
        assert sqs_backends not in BackendDict._instances
        assert sqs.list_queues().get("QueueUrls", []) == []
        # Registered again, so the next reset clears what this run creates.
        assert sqs_backends in BackendDict._instances
        sqs.create_queue(QueueName="after-reset")
        moto_api_backend.reset()
        assert sqs.list_queues().get("QueueUrls", []) == []
