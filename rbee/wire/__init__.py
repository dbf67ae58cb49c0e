"""The contracts between rbee's processes (DESIGN §4, §8), each written once.

`bodies`: the JSON bodies of every HTTP route. `processes`: each daemon's command line.
`sse`: how streams frame their events. Field names are contracts: keep them stable.
"""

from __future__ import annotations

from rbee.wire.bodies import (
    AddModel,
    AddWorkerBinary,
    Capabilities,
    GgufFacts,
    Gpu,
    Health,
    Heartbeat,
    ModelEntry,
    OperationEvent,
    OperationStarted,
    WorkerBinaryEntry,
    WorkerState,
    WorkerView,
    openai_error,
)
from rbee.wire.processes import (
    CommandLine,
    HiveArgs,
    QueenArgs,
    SpawnWorker,
    WorkerArgs,
    WorkerProcess,
)
from rbee.wire.queen import ApiKey, CreatedKey, CreateKey

__all__ = [
    "AddModel",
    "AddWorkerBinary",
    "ApiKey",
    "Capabilities",
    "CommandLine",
    "CreateKey",
    "CreatedKey",
    "GgufFacts",
    "Gpu",
    "Health",
    "Heartbeat",
    "HiveArgs",
    "ModelEntry",
    "OperationEvent",
    "OperationStarted",
    "QueenArgs",
    "SpawnWorker",
    "WorkerArgs",
    "WorkerBinaryEntry",
    "WorkerProcess",
    "WorkerState",
    "WorkerView",
    "openai_error",
]
