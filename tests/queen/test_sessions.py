"""The status page's sessions and login throttle, on a clock the test moves."""

from __future__ import annotations

from rbee.queen.http.sessions import FREE_TRIES, MAX_WAIT_S, TTL_S, Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_its_ttl_and_dies_at_logout() -> None:
    clock = Clock()
    sessions = Sessions(clock)
    first, second = sessions.open("key-a"), sessions.open("key-b")
    assert first != second and sessions.secret(first) == "key-a"
    sessions.close(second)
    assert sessions.secret(second) is None
    clock.now += TTL_S - 1
    assert sessions.secret(first) == "key-a"
    clock.now += 1
    assert sessions.secret(first) is None
    assert sessions.secret("made-up") is None


def test_failed_logins_wait_twice_as_long_each_time_and_a_success_forgets_them() -> None:
    clock = Clock()
    sessions = Sessions(clock)
    for _ in range(FREE_TRIES - 1):
        sessions.failed("10.0.0.9")
    assert sessions.wait_s("10.0.0.9") == 0
    waits = []
    for _ in range(4):
        sessions.failed("10.0.0.9")
        waits.append(sessions.wait_s("10.0.0.9"))
    assert waits == [1, 2, 4, 8]
    assert sessions.wait_s("10.0.0.8") == 0  # per address
    for _ in range(40):
        sessions.failed("10.0.0.9")
    assert sessions.wait_s("10.0.0.9") == MAX_WAIT_S
    clock.now += MAX_WAIT_S
    assert sessions.wait_s("10.0.0.9") == 0
    sessions.succeeded("10.0.0.9")
    sessions.failed("10.0.0.9")
    assert sessions.wait_s("10.0.0.9") == 0
