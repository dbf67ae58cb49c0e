"""A suite that needs root never goes quiet: skipped with its reason here, failed under CI."""

from __future__ import annotations

import pytest

from tests.fixtures.netns import require_lab


def test_without_root_ci_fails_naming_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"need root .*CI must run this suite"):
        require_lab()


def test_without_root_a_developer_sees_the_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"need root"):
        require_lab()
