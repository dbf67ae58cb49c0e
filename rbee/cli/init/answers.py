"""What `rbee init` writes the cluster YAML from: the facts it found and the answers it got."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rbee.config.models import Hive
    from rbee.wire import Capabilities

__all__ = ["InitAnswers", "ModelFacts", "PinnedBy"]

PinnedBy = Literal["hub", "file", "flag"]


@dataclass(frozen=True)
class ModelFacts:
    """The model to deploy. Without a sha256, `unpinned_because` says why."""

    name: str
    source: str
    sha256: str | None = None
    pinned_by: PinnedBy | None = None
    unpinned_because: str | None = None


@dataclass(frozen=True)
class InitAnswers:
    """Everything the YAML is written from: facts found and answers given."""

    model: ModelFacts
    #: This machine's capabilities; None when they could not be read.
    machine: Capabilities | None
    #: The name of the hive on this machine; None for no hive here.
    local: str | None
    queen_url: str
    ssh_hives: tuple[Hive, ...] = ()
    ssh_config: str = "~/.ssh/config"
    replicas: int = 1

    @property
    def queen_on_loopback(self) -> bool:
        from rbee.config.models import Queen

        return Queen(url=self.queen_url).is_loopback
