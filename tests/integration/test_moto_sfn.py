"""moto's Step Functions interpreter with localcloud/moto_sfn.py's patches: service integrations
in-process with one client per service, paths parsed once, no per-item copy of the map input,
a watchdog thread only where a timeout needs one.

What this cannot prove: AWS's own scheduling, timings and quotas; IAM (moto checks none).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from moto import mock_aws
from moto.core.config import default_user_config
from moto.moto_api._internal.models import moto_api_backend
from moto.sqs.models import SQSBackend
from moto.stepfunctions.parser import utils as sfn_utils
from moto.stepfunctions.parser.asl.component.common.path import result_path
from moto.stepfunctions.parser.asl.component.state.exec import execute_state
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import job as map_jobs
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_sqs
from moto.stepfunctions.parser.asl.eval.event import event_manager
from moto.stepfunctions.parser.asl.eval.states import States
from moto.stepfunctions.parser.asl.utils import boto_client, json_path
from moto.stepfunctions.parser.backend.execution import Execution
from moto.stepfunctions.parser.models import stepfunctions_parser_backends

from localcloud import front
from localcloud.front import InProcess
from localcloud.moto_fixes import aws_like_heartbeats, outcome_before_status
from localcloud.moto_sfn import in_process_integrations, lean_interpreter
from tests.support.clients import REGION, client, dead_endpoint

pytestmark = pytest.mark.slow

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/sfn"
DEADLINE_S = 90.0  # bounds a hung execution; a loaded 2-core CI machine needs the room
MOTOS_CLIENT_FACTORY = boto_client.boto_client_for  # before any patch


def _run(sfn: Any, definition: dict[str, Any], payload: Any, name: str) -> dict[str, Any]:
    arn = sfn.create_state_machine(name=name, definition=json.dumps(definition), roleArn=ROLE)[
        "stateMachineArn"
    ]
    return _execute(sfn, arn, payload)


def _execute(sfn: Any, arn: str, payload: Any) -> dict[str, Any]:
    execution = sfn.start_execution(stateMachineArn=arn, name=uuid.uuid4().hex, input=json.dumps(payload))[
        "executionArn"
    ]
    return _finished(sfn, execution)


def _finished(sfn: Any, execution: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        described: dict[str, Any] = sfn.describe_execution(executionArn=execution)
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.02)
    raise AssertionError(f"{execution} still running after {DEADLINE_S} s")


def _send_task(queue_url: str, *, callback: bool = False, timeout_s: int | None = None) -> dict[str, Any]:
    task: dict[str, Any] = {
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage" + (".waitForTaskToken" if callback else ""),
        "Parameters": {
            "QueueUrl": queue_url,
            "MessageBody": {"token.$": "$$.Task.Token"} if callback else {"n.$": "$.n"},
        },
        "End": True,
    }
    if timeout_s is not None:
        task["TimeoutSeconds"] = timeout_s
    return {"StartAt": "Send", "States": {"Send": task}}


@pytest.fixture
def lean_sfn() -> Iterator[None]:
    with (
        mock_aws(config={"stepfunctions": {"execute_state_machine": True}}),
        lean_interpreter(),
        outcome_before_status(),
    ):
        yield


# ---- outcome_before_status: what DescribeExecution sees --------------------------------------

_ENDINGS = {
    "SUCCEEDED": {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}},
    "FAILED": {"StartAt": "No", "States": {"No": {"Type": "Fail", "Error": "E", "Cause": "C"}}},
}


def _outcome_when_status_set(status: str) -> dict[str, Any]:
    """An execution's output, error and cause at the moment its final status is assigned."""
    seen: dict[str, Any] = {}
    original = Execution.__setattr__

    def record(self: Execution, name: str, value: Any) -> None:
        if name == "exec_status" and value == status and not seen:
            seen.update({k: getattr(self, k, None) for k in ("output", "error", "cause")})
        original(self, name, value)

    with mock.patch.object(Execution, "__setattr__", record):
        done = _run(client("stepfunctions"), _ENDINGS[status], {"in": 1}, f"ending-{status.lower()}")
    assert done["status"] == status
    return seen


@pytest.mark.parametrize("status", sorted(_ENDINGS))
def test_an_outcome_is_in_place_before_the_status_that_shows_it(lean_sfn: None, status: str) -> None:
    """A poller that sees the final status also sees the output (or the error and cause)."""
    outcome = _outcome_when_status_set(status)
    if status == "SUCCEEDED":
        assert outcome["output"] == {"in": 1}
    else:
        assert (outcome["error"], outcome["cause"]) == ("E", "C")


def test_moto_alone_shows_the_status_before_the_output() -> None:
    # Why the patch exists; if moto stops doing this, the patch can go.
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        assert _outcome_when_status_set("SUCCEEDED")["output"] is None


# ---- in_process_integrations --------------------------------------------------------------


@pytest.fixture
def counted() -> list[str]:
    """The requests `in_process_integrations` reports as not passing moto's call_action."""
    return []


@pytest.fixture
def in_process(counted: list[str]) -> Iterator[InProcess]:
    """moto's backends with execution on and no mock: every request goes through `route`."""
    moto_api_backend.reset()
    route = InProcess(REGION)
    with (
        mock.patch.dict(default_user_config, {"stepfunctions": {"execute_state_machine": True}}),
        in_process_integrations(route, dead_endpoint(), counted.append),
    ):
        yield route
    moto_api_backend.reset()


def test_the_interpreter_gets_one_in_process_client_per_region_and_service(in_process: InProcess) -> None:
    client_for = state_task_service_sqs.boto_client_for
    assert client_for is not MOTOS_CLIENT_FACTORY
    sqs = client_for(REGION, "sqs")
    assert client_for(REGION, "sqs") is sqs
    assert client_for("eu-west-1", "sqs") is not sqs
    assert client_for(REGION, "lambda") is not sqs
    # The endpoint has no listener: this answer came from the backends in this process.
    sqs.create_queue(QueueName="via-route")
    assert sqs.list_queues()["QueueUrls"] == ["https://sqs.us-east-1.amazonaws.com/123456789012/via-route"]
    in_process.open = False
    with pytest.raises(Exception, match="the embedded AWS is closed"):
        sqs.list_queues()


def test_a_state_machine_sends_to_sqs_straight_into_the_backend(
    in_process: InProcess, counted: list[str]
) -> None:
    endpoint = dead_endpoint()
    sqs = in_process.attach(client("sqs", endpoint))
    sfn = in_process.attach(client("stepfunctions", endpoint))
    url = sqs.create_queue(QueueName="sfn-target")["QueueUrl"]
    interpreters_sqs = state_task_service_sqs.boto_client_for(REGION, "sqs")
    with mock.patch.object(front, "dispatch", wraps=front.dispatch) as routed:
        first = _run(sfn, _send_task(url), {"n": 1}, "send-in-process")
        arn = first["stateMachineArn"]
        second = _execute(sfn, arn, {"n": 2})
    assert (first["status"], second["status"]) == ("SUCCEEDED", "SUCCEEDED")
    # Neither send was a request (the route saw none), both were counted, on one client.
    targets = [c.args[0].headers.get("X-Amz-Target", b"") for c in routed.call_args_list]
    assert targets.count(b"AmazonSQS.SendMessage") == 0
    assert counted == ["sqs:SendMessage", "sqs:SendMessage"]
    assert state_task_service_sqs.boto_client_for(REGION, "sqs") is interpreters_sqs
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])[
        "Messages"
    ]
    assert sorted(json.loads(m["Body"])["n"] for m in messages) == [1, 2]
    # What the state recorded is what SendMessage answers on the wire.
    output = json.loads(first["output"])
    assert set(output) == {"MessageId", "MD5OfMessageBody"}
    assert output["MessageId"] in {m["MessageId"] for m in messages}
    assert output["MD5OfMessageBody"] in {m["MD5OfBody"] for m in messages}


def test_a_direct_send_keeps_attributes_and_fails_as_a_request_would(in_process: InProcess) -> None:
    endpoint = dead_endpoint()
    sqs = in_process.attach(client("sqs", endpoint))
    sfn = in_process.attach(client("stepfunctions", endpoint))
    url = sqs.create_queue(QueueName="attributes")["QueueUrl"]
    definition = _send_task(url)
    definition["States"]["Send"]["Parameters"]["MessageAttributes"] = {
        "kind": {"DataType": "String", "StringValue": "probe"}
    }
    sent = _run(sfn, definition, {"n": 1}, "send-attributes")
    assert sent["status"] == "SUCCEEDED", sent
    (message,) = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"])["Messages"]
    assert message["MessageAttributes"]["kind"]["StringValue"] == "probe"
    assert json.loads(sent["output"])["MD5OfMessageAttributes"] == message["MD5OfMessageAttributes"]
    # A queue that does not exist fails the task with moto's message, as a request did.
    gone = _run(sfn, _send_task(url.replace("attributes", "missing")), {"n": 1}, "send-missing")
    assert gone["status"] == "FAILED"
    assert gone["error"] == "SQS.SdkClientException"
    assert "The specified queue does not exist" in gone["cause"]


def test_in_process_integrations_reach_modules_imported_later() -> None:
    script = """
from localcloud import front
from localcloud.front import InProcess
from localcloud.moto_fixes import aws_like_heartbeats, outcome_before_status
from localcloud.moto_sfn import in_process_integrations
from moto.stepfunctions.parser.asl.utils import boto_client
original = boto_client.boto_client_for
with in_process_integrations(InProcess("us-east-1"), "http://127.0.0.1:9"):
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_sqs as sqs,
    )
    print(sqs.boto_client_for is original)
"""
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


# ---- lean_interpreter: JSONPath parsed once -----------------------------------------------


def test_the_same_paths_are_parsed_once_across_executions() -> None:
    definition = {
        "StartAt": "Shape",
        "States": {
            "Shape": {
                "Type": "Pass",
                "Parameters": {"a.$": "$.x.y", "b.$": "$.z[0]"},
                "ResultPath": "$.shaped",
                "OutputPath": "$.shaped",
                "End": True,
            }
        },
    }
    with (
        mock.patch.object(json_path, "parse", wraps=json_path.parse) as ext_parse,
        mock.patch.object(result_path, "parse", wraps=result_path.parse) as plain_parse,
        mock_aws(config={"stepfunctions": {"execute_state_machine": True}}),
        lean_interpreter(),
    ):
        sfn = client("stepfunctions")
        first = _run(sfn, definition, {"x": {"y": 1}, "z": [2]}, "parse-once")
        parsed_first = ext_parse.call_count + plain_parse.call_count
        second = _execute(sfn, first["stateMachineArn"], {"x": {"y": 3}, "z": [4]})
        parsed_again = ext_parse.call_count + plain_parse.call_count - parsed_first
    assert json.loads(first["output"]) == {"a": 1, "b": 2}
    assert json.loads(second["output"]) == {"a": 3, "b": 4}
    assert parsed_first > 0
    assert parsed_again == 0


# ---- lean_interpreter: no copy of the whole map input per item ------------------------------


def _map(items: int, concurrency: int) -> dict[str, Any]:
    return {
        "StartAt": "Fan",
        "States": {
            "Fan": {
                "Type": "Map",
                "ItemsPath": "$.items",
                "ItemSelector": {"v.$": "$$.Map.Item.Value", "tag.$": "$.tag"},
                "MaxConcurrency": concurrency,
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                    "StartAt": "Echo",
                    "States": {"Echo": {"Type": "Pass", "End": True}},
                },
                "End": True,
            }
        },
    }


def test_one_map_worker_takes_hundreds_of_items_without_recursing(lean_sfn: None) -> None:
    """moto's worker called itself per item: a RecursionError within 1,000 items at MaxConcurrency 1."""
    sfn = client("stepfunctions")
    done = _run(sfn, _map(1000, concurrency=1), {"items": list(range(1000)), "tag": "t"}, "one-worker")
    assert done["status"] == "SUCCEEDED", done
    assert json.loads(done["output"]) == [{"v": i, "tag": "t"} for i in range(1000)]


def test_a_map_run_keeps_no_history_of_its_children(lean_sfn: None) -> None:
    """moto stored every child's every event of a Map run (O(N) memory, one lock), never read."""
    managers: list[event_manager.EventManager] = []
    original_init = event_manager.EventManager.__init__

    def remember(self: event_manager.EventManager, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        managers.append(self)

    sfn = client("stepfunctions")
    with mock.patch.object(event_manager.EventManager, "__init__", remember):
        done = _run(sfn, _map(200, concurrency=20), {"items": list(range(200)), "tag": "t"}, "history")
    assert done["status"] == "SUCCEEDED", done
    assert json.loads(done["output"]) == [{"v": i, "tag": "t"} for i in range(200)]
    # The execution's own history holds a handful of events; the 200 children's (800 in moto)
    # are not kept anywhere.
    assert 0 < sum(len(m.get_event_history()) for m in managers) < 20
    events = sfn.get_execution_history(executionArn=done["executionArn"], maxResults=1000)["events"]
    assert [e["type"] for e in events if e["type"].startswith("MapRun")] == [
        "MapRunStarted",
        "MapRunSucceeded",
    ]


def _whole_input_copies(items: int) -> tuple[int, list[Any]]:
    """Runs a Distributed Map over `items` items; counts States.reset calls (each a deepcopy)
    handed the whole map input."""
    whole = 0
    lock = threading.Lock()
    original = States.reset

    def counting_reset(self: States, input_value: Any) -> None:
        nonlocal whole
        if isinstance(input_value, dict) and len(input_value.get("items", ())) == items:
            with lock:
                whole += 1
        original(self, input_value)

    with mock.patch.object(States, "reset", counting_reset):
        sfn = client("stepfunctions")
        done = _run(
            sfn, _map(items, concurrency=4), {"items": list(range(items)), "tag": "t"}, f"map-{items}"
        )
    assert done["status"] == "SUCCEEDED", done
    return whole, json.loads(done["output"])


def test_map_items_do_not_copy_the_whole_input(lean_sfn: None) -> None:
    few, few_output = _whole_input_copies(10)
    many, many_output = _whole_input_copies(300)
    assert few_output == [{"v": i, "tag": "t"} for i in range(10)]
    assert many_output == [{"v": i, "tag": "t"} for i in range(300)]
    # The execution's own reset of its input, whatever the number of items: none per item.
    assert few == many
    assert many < 10


def _outputs_copied(items: int, name: str) -> tuple[int, list[Any]]:
    """Runs a Distributed Map over `items` items; counts the child outputs deep-copied when the
    Map collects them."""
    copied = 0
    original = map_jobs.copy.deepcopy

    def counting_deepcopy(value: Any, *args: Any) -> Any:
        nonlocal copied
        if isinstance(value, set) and all(isinstance(v, map_jobs.JobClosed) for v in value):
            copied += len(value)
        return original(value, *args)

    with mock.patch.object(map_jobs.copy, "deepcopy", counting_deepcopy):
        done = _run(client("stepfunctions"), _map(items, 8), {"items": list(range(items)), "tag": "t"}, name)
    assert done["status"] == "SUCCEEDED", done
    return copied, json.loads(done["output"])


def test_a_map_collects_its_outputs_without_copying_them(lean_sfn: None) -> None:
    copied, output = _outputs_copied(300, "outputs-lean")
    assert output == [{"v": i, "tag": "t"} for i in range(300)]  # in item order, as before
    assert copied == 0


def test_moto_alone_copies_every_output_at_the_end_of_a_map() -> None:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        copied, output = _outputs_copied(50, "outputs-moto")
    assert output == [{"v": i, "tag": "t"} for i in range(50)]
    assert copied == 50


# ---- lean_interpreter: a watchdog thread only where a timeout needs one ---------------------


def _thread_starts(targets: list[str]) -> Any:
    """Records the target of every thread started (Thread.run drops it once done)."""
    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        targets.append(getattr(self, "_target", None).__name__)  # type: ignore[union-attr]
        original(self)

    return mock.patch.object(threading.Thread, "start", start)


def test_a_task_without_timeout_runs_on_the_executions_thread(lean_sfn: None) -> None:
    sqs, sfn = client("sqs"), client("stepfunctions")
    url = sqs.create_queue(QueueName="inline")["QueueUrl"]
    kept = sfn_utils.TMP_THREADS
    kept_before = len(kept)
    arn = _run(sfn, _send_task(url), {"n": 0}, "inline")["stateMachineArn"]
    started: list[str] = []
    with _thread_starts(started):
        done = _execute(sfn, arn, {"n": 1})
    assert done["status"] == "SUCCEEDED"
    # The execution's own worker thread, and nothing for its program or its Task.
    assert started == ["_execution_logic"]
    assert len(kept) == kept_before
    assert sfn_utils.TMP_THREADS is kept


def test_a_task_with_timeout_still_times_out(lean_sfn: None) -> None:
    sqs, sfn = client("sqs"), client("stepfunctions")
    url = sqs.create_queue(QueueName="slow")["QueueUrl"]
    release = threading.Event()
    original = SQSBackend.send_message

    def slow_send(self: SQSBackend, *args: Any, **kwargs: Any) -> Any:
        release.wait(5)  # bounded: the test releases it on the way out
        return original(self, *args, **kwargs)

    try:
        with mock.patch.object(SQSBackend, "send_message", slow_send):
            started = time.monotonic()
            done = _run(sfn, _send_task(url, timeout_s=1), {"n": 1}, "slow")
            took = time.monotonic() - started
    finally:
        release.set()
    assert (done["status"], done.get("error")) == ("FAILED", "States.Timeout")
    assert took < 4


def test_a_callback_task_times_out_when_nobody_answers(lean_sfn: None) -> None:
    sqs, sfn = client("sqs"), client("stepfunctions")
    url = sqs.create_queue(QueueName="unanswered")["QueueUrl"]
    started = time.monotonic()
    done = _run(sfn, _send_task(url, callback=True, timeout_s=1), {}, "unanswered")
    assert (done["status"], done.get("error")) == ("FAILED", "States.Timeout")
    assert time.monotonic() - started < 4


def test_a_callback_task_succeeds_when_its_token_is_answered(lean_sfn: None) -> None:
    sqs, sfn = client("sqs"), client("stepfunctions")
    url = sqs.create_queue(QueueName="answered")["QueueUrl"]
    arn = sfn.create_state_machine(
        name="answered", definition=json.dumps(_send_task(url, callback=True, timeout_s=2)), roleArn=ROLE
    )["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=arn, input="{}")["executionArn"]
    messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
    token = json.loads(messages[0]["Body"])["token"]
    sfn.send_task_success(taskToken=token, output=json.dumps({"answered": True}))
    done = _finished(sfn, execution)
    assert (done["status"], json.loads(done["output"])) == ("SUCCEEDED", {"answered": True})


# ---- lean_interpreter: a finished callback task's endpoint is let go --------------------------

BIG_OUTPUT = {"answer": "x" * 50_000}


def _two_waiting_tasks() -> tuple[Any, str, str, str]:
    """An execution with two callback tasks waiting in parallel: (sfn client, its ARN, token 1,
    token 2)."""
    sqs, sfn = client("sqs"), client("stepfunctions")
    urls = [sqs.create_queue(QueueName=f"parallel-{n}")["QueueUrl"] for n in (1, 2)]
    definition = {
        "StartAt": "Both",
        "States": {
            "Both": {
                "Type": "Parallel",
                "Branches": [_send_task(u, callback=True) for u in urls],
                "End": True,
            }
        },
    }
    arn = sfn.create_state_machine(name="two-waiting", definition=json.dumps(definition), roleArn=ROLE)[
        "stateMachineArn"
    ]
    execution = sfn.start_execution(stateMachineArn=arn, input="{}")["executionArn"]
    tokens = [
        json.loads(sqs.receive_message(QueueUrl=u, WaitTimeSeconds=5)["Messages"][0]["Body"])["token"]
        for u in urls
    ]
    return sfn, execution, tokens[0], tokens[1]


def _pool_entry(token: str) -> Any:
    backend = stepfunctions_parser_backends[ACCOUNT][REGION]
    for execution in backend._get_executions():
        entry = execution.exec_worker.env.callback_pool_manager.get(token)
        if entry is not None:
            return entry
    raise AssertionError(f"no execution holds {token}")


def _answered(sfn: Any, execution: str, token: str) -> Any:
    """Answers `token`, then waits (bounded) until its task has taken the answer; its pool entry."""
    sfn.send_task_success(taskToken=token, output=json.dumps(BIG_OUTPUT))
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        events = sfn.get_execution_history(executionArn=execution, maxResults=1000)["events"]
        if any(e["type"] == "TaskSucceeded" for e in events):
            return _pool_entry(token)
        time.sleep(0.02)
    raise AssertionError("the answered task never took its answer")


@pytest.fixture
def lean_sfn_with_heartbeats(lean_sfn: None) -> Iterator[None]:
    with aws_like_heartbeats():
        yield


def test_a_finished_callback_task_keeps_nothing_of_its_output_and_answers_as_before(
    lean_sfn_with_heartbeats: None,
) -> None:
    sfn, execution, first, second = _two_waiting_tasks()
    entry = _answered(sfn, execution, first)
    assert type(entry).__name__ == "_Answered"
    assert "x" * 50_000 not in repr([getattr(entry, name, None) for name in dir(entry)])
    # While the execution runs: the ended task is gone, the waiting one is alive.
    with pytest.raises(sfn.exceptions.ClientError, match="TaskDoesNotExist"):
        sfn.send_task_heartbeat(taskToken=first)
    sfn.send_task_heartbeat(taskToken=second)
    sfn.send_task_success(taskToken=first, output="{}")  # a late answer changes nothing, as in moto
    sfn.send_task_success(taskToken=second, output=json.dumps({"n": 2}))
    done = _finished(sfn, execution)
    assert (done["status"], json.loads(done["output"])) == ("SUCCEEDED", [BIG_OUTPUT, {"n": 2}])


def test_moto_alone_keeps_a_finished_callback_tasks_endpoint_and_output() -> None:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}), aws_like_heartbeats():
        sfn, execution, first, second = _two_waiting_tasks()
        entry = _answered(sfn, execution, first)
        assert type(entry).__name__ == "CallbackEndpoint"
        assert json.loads(entry.get_outcome().output) == BIG_OUTPUT
        sfn.send_task_success(taskToken=second, output="{}")
        assert _finished(sfn, execution)["status"] == "SUCCEEDED"


def test_no_thread_is_kept_in_mottos_lists(lean_sfn: None) -> None:
    kept = sfn_utils.TMP_THREADS
    before = len(kept)
    sqs, sfn = client("sqs"), client("stepfunctions")
    url = sqs.create_queue(QueueName="kept")["QueueUrl"]
    assert _run(sfn, _send_task(url, timeout_s=2), {"n": 1}, "kept")["status"] == "SUCCEEDED"
    assert execute_state.TMP_THREADS == []
    assert len(kept) == before
