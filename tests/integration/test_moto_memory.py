"""moto keeps no SQS message (or other model) alive after its backend drops it; S3 keys stay
tracked, since moto's reset closes their files through that list."""

from __future__ import annotations

import gc

import boto3
import pytest
from moto import mock_aws
from moto.s3.models import FakeKey
from moto.sqs.models import Message

from localcloud.moto_fixes import untracked_model_instances

pytestmark = pytest.mark.slow
REGION = "us-east-1"


def _send_and_delete(count: int) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName="memory")["QueueUrl"]
    for n in range(count):
        sqs.send_message(QueueUrl=url, MessageBody=f"item {n}")
        for message in sqs.receive_message(QueueUrl=url).get("Messages", []):
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def _live_messages() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Message))


def test_moto_alone_keeps_every_message_ever_sent() -> None:
    # Why the patch exists; if moto stops doing this, the patch can go.
    with mock_aws():
        _send_and_delete(20)
        assert len(Message.instances_tracked) >= 20  # type: ignore[attr-defined]


def test_a_deleted_message_is_freed_and_s3_keys_stay_tracked() -> None:
    with mock_aws(), untracked_model_instances():
        before = _live_messages()
        _send_and_delete(20)
        assert Message.instances_tracked == []  # type: ignore[attr-defined]
        assert _live_messages() <= before
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="memory")
        s3.put_object(Bucket="memory", Key="k", Body=b"x")
        assert any(key.name == "k" for key in FakeKey.instances_tracked)  # type: ignore[attr-defined]
