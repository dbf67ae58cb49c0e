"""What a log request asks for: the query of the hive's `/v1/logs` and `/v1/worker-logs/ID`
and of the queen's `/v1/logs/...`, which passes it on to the hive unchanged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["MAX_LINES", "LogQuery"]

#: The most lines one request returns (`follow` streams on after them).
MAX_LINES = 10_000


class LogQuery(BaseModel):
    """`?lines=N&since=SECONDS&follow=1`."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    lines: int = Field(default=50, ge=1, le=MAX_LINES, description="the last N lines")
    since: float | None = Field(
        default=None, gt=0, description="only entries logged within this many seconds"
    )
    follow: bool = Field(default=False, description="then stream new lines until the client goes")

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> LogQuery:
        """The query of a request (or of a command's options); ValueError naming the first
        bad parameter."""
        try:
            return cls.model_validate(dict(params))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "query"
            raise ValueError(f"{where}: {first['msg']}") from None

    def params(self) -> dict[str, str]:
        """The query as URL parameters (what `parse` reads back)."""
        params = {"lines": str(self.lines)}
        if self.since is not None:
            params["since"] = f"{self.since:g}"
        if self.follow:
            params["follow"] = "1"
        return params
