"""`QueenState`: the objects of one queen that its routes share (`request.app.state.queen`).

Built by `rbee.queen.app.create_app`, each object with its collaborators; its own module so
that the routes, the front door and the app all import it and none imports another for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rbee.queen.control.autoscale import Autoscaler
from rbee.queen.control.control import Control
from rbee.queen.control.heal import Healer
from rbee.queen.control.hive_registry import HiveRegistry
from rbee.queen.control.renewal import Renewals
from rbee.queen.control.store import Store
from rbee.queen.http.auth import Authenticator, Keys
from rbee.queen.http.sessions import Sessions
from rbee.queen.serve.admission import Admission
from rbee.queen.serve.calls import Calls
from rbee.queen.serve.jobs import Jobs
from rbee.queen.serve.metrics import Metrics
from rbee.queen.serve.registry import Registry
from rbee.queen.serve.relay import Relay

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["QueenState", "queen_of"]


@dataclass
class QueenState:
    """Everything the queen's handlers share (`request.app.state.queen`)."""

    store: Store
    hive_registry: HiveRegistry
    registry: Registry
    admission: Admission
    control: Control
    keys: Keys
    auth: Authenticator
    metrics: Metrics
    calls: Calls
    relay: Relay
    healer: Healer
    autoscaler: Autoscaler
    jobs: Jobs
    token: str
    hive_check_interval_s: float
    renewals: Renewals
    sessions: Sessions = field(default_factory=Sessions)
    background: set[asyncio.Task[None]] = field(default_factory=set)


def queen_of(request: Request) -> QueenState:
    """The queen behind a request to one of its Starlette apps."""
    state: QueenState = request.app.state.queen
    return state
