"""Two legacy APIs with different limits, each fed by its own ThrottledFanOut.

The ERP takes 8 calls in flight and answers in about 0.5 s; the partner API takes 2 and answers
in about 2 s, and its work is all one priority. Each instance gets its own queues, worker,
state machine, idempotency table and alarms, named after the instance, so both live in one
stack without colliding.
"""

from __future__ import annotations

import pulumi

from sluice_fanout import ThrottledFanOut

config = pulumi.Config()

erp = ThrottledFanOut(
    "erp",
    {
        # Little's law: 16 calls/s wanted x 0.5 s per call = 8 in flight (docs/limits.md).
        "concurrency": 8,
        "http_target": {"url": config.require("erpUrl"), "secret_arn": config.require("erpSecretArn")},
        "priorities": ["HIGH", "NORMAL", "BATCH"],
    },
)

partner = ThrottledFanOut(
    "partner",
    {
        "concurrency": 2,
        "priorities": ["STANDARD"],
        "http_target": {
            "url": config.require("partnerUrl"),
            "ssm_parameter_arn": config.require("partnerParameterArn"),
            "ssm_parameter_name": "/partner/token",
            "timeout_seconds": 5.0,
        },
        # Slow calls: a longer worker timeout (the queues' visibility follows at 6x).
        "worker_timeout_seconds": 60,
        "callback_timeout_seconds": 6 * 3600,
    },
)

pulumi.export("erpStateMachineArn", erp.state_machine_arn)
pulumi.export("partnerStateMachineArn", partner.state_machine_arn)
pulumi.export("dlqUrls", {"erp": erp.dlq_urls, "partner": partner.dlq_urls})
