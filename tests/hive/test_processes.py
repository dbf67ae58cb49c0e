"""Reading a worker back from its command line: the hive's only record of it."""

from __future__ import annotations

from rbee.hive.processes import parse_worker
from rbee.wire import SpawnWorker, WorkerArgs, WorkerProcess

REQUEST = SpawnWorker(
    worker_id="w7",
    hive="gpu1",
    model="gemma3-270m",
    worker_binary="cuda",
    slots=4,
    ctx_size=2048,
    device="cuda:1",
    chat_format="gemma",
    queen_url="http://10.0.0.1:7833",
)


def test_the_spawn_command_line_parses_back_to_the_worker() -> None:
    args = WorkerArgs(**REQUEST.model_dump(), model_path="/m/payload", port=41234)
    worker = parse_worker(99, args.command(), 1700000000.5)
    assert worker == WorkerProcess(**args.model_dump(), pid=99, started_at=1700000000.5)
    assert worker.url == "http://127.0.0.1:41234"
    # Everything the planner compares survives the trip, chat_format included.
    assert worker.spec() == REQUEST.spec()


def test_the_console_script_with_equals_flags_is_a_worker_too() -> None:
    argv = ["/venv/bin/python", "/venv/bin/llm-worker-rbee", "--worker-id=a", "--hive=h"]
    argv += ["--model=m", "--model-path=/m", "--queen-url=http://q", "--port=5000", "--host=::1"]
    worker = parse_worker(5, argv, 0.0)
    assert worker is not None
    assert (worker.worker_id, worker.port, worker.url) == ("a", 5000, "http://[::1]:5000")


def test_other_command_lines_are_not_workers() -> None:
    assert parse_worker(1, ["/sbin/init"], 0.0) is None
    assert parse_worker(2, ["python", "-m", "pytest", "rbee.worker.server"], 0.0) is None
    assert parse_worker(3, ["python", "-m", "rbee.worker.server", "--port", "x"], 0.0) is None


def test_a_worker_with_a_tls_identity_is_reached_over_https() -> None:
    identity = "/home/rbee/.local/state/rbee/tls/workers/w7.pem"
    args = WorkerArgs(**REQUEST.model_dump(), model_path="/m", port=41234, identity=identity)
    worker = parse_worker(99, args.command(), 0.0)
    assert worker is not None
    assert (worker.identity, worker.url) == (identity, "https://127.0.0.1:41234")
