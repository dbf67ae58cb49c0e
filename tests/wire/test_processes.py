"""Each daemon's command line is one typed value: written by `to_argv`, read by `from_argv`."""

from __future__ import annotations

import pytest

from rbee.wire import CommandLine, HiveArgs, QueenArgs, RpcServerArgs, SpawnWorker, WorkerArgs

# Every flag set to a value other than its default, so a field lost on the way shows up.
WORKER = WorkerArgs(
    worker_id="gpu1.gemma3-270m.0",
    hive="gpu1",
    model="gemma3-270m",
    slots=4,
    ctx_size=2048,
    prompt_cache=512 << 20,
    device="cuda:1,cuda:2",
    worker_binary="cuda",
    chat_format="gemma",
    split_mode="row",
    tensor_split="0.25,0.5,0.25",
    gpu_layers=40,
    rpc="gpu2@10.0.0.12:7836",
    queen_url="http://10.0.0.1:7833",
    model_path="/home/rbee/.cache/rbee/models/gemma3-270m/payload",
    host="10.0.0.11",
    port=41234,
    threads=3,
    identity="/home/rbee/.local/state/rbee/tls/workers/gpu1.gemma3-270m.0.pem",
    socket="/run/user/1000/rbee/5c333fb2af8fdf0c9d80056a.sock",
)
HIVE = HiveArgs(
    host="10.0.0.11",
    port=7900,
    name="gpu1",
    queen_url="https://10.0.0.1:7834",
    identity=".local/state/rbee/tls/hive.pem",
)
QUEEN = QueenArgs(
    host="0.0.0.0",
    port=7900,
    cluster_port=7950,
    public_url="http://10.0.0.1:7900",
    db="/var/lib/rbee/queen.db",
    hive_check_interval=7.0,
    max_body_mb=2.5,
    tls_cert="/etc/rbee/queen.crt",
    tls_key="/etc/rbee/queen.key",
)
RPC_SERVER = RpcServerArgs(
    worker_binary="cuda",
    device="cuda:0,cuda:1",
    port=7900,
    threads=3,
    hive="gpu2",
    host="10.0.0.12",
    cache_dir="/home/rbee/.cache/rbee/rpc-cache",
    identity="/home/rbee/.local/state/rbee/tls/hive.pem",
)
SAMPLES = pytest.mark.parametrize(
    "args", [WORKER, HIVE, QUEEN, RPC_SERVER], ids=["worker", "hive", "queen", "rpc-server"]
)


def _secrets(cls: type[CommandLine]) -> set[str]:
    return {name for name in cls.flags() if cls.model_fields[name].exclude}


@SAMPLES
def test_every_flag_round_trips_through_the_command_line(args: CommandLine) -> None:
    cls = type(args)
    unset = [
        name
        for name in set(cls.flags()) - _secrets(cls)
        if getattr(args, name) == cls.model_fields[name].get_default(call_default_factory=True)
    ]
    assert unset == [], "give these fields a non-default value in the sample"
    assert cls.from_argv(args.to_argv()) == args


@SAMPLES
def test_the_daemon_reads_the_command_line_it_is_started_with(args: CommandLine) -> None:
    command = args.command("/venv/bin/python")
    assert command[:3] == ["/venv/bin/python", "-m", args.MODULE]
    assert type(args).parse_cli(command[3:]) == args


def test_the_hive_reads_a_worker_back_from_its_process_command_line() -> None:
    assert WorkerArgs.from_cmdline(WORKER.command("/venv/bin/python")) == WORKER
    script = ["/venv/bin/python", "/venv/bin/llm-worker-rbee", *WORKER.to_argv()]
    assert WorkerArgs.from_cmdline(script) == WORKER


def test_flags_written_with_equals_signs_read_back_too() -> None:
    argv = [f"{flag}={value}" for flag, value in zip(*[iter(WORKER.to_argv())] * 2, strict=True)]
    assert WorkerArgs.from_argv(argv) == WORKER


def test_a_flag_of_another_rbee_version_does_not_hide_the_worker() -> None:
    argv = [*WORKER.command(), "--flag-from-the-future", "1"]
    assert WorkerArgs.from_cmdline(argv) == WORKER


def test_other_command_lines_are_not_workers() -> None:
    assert WorkerArgs.from_cmdline(["/sbin/init"]) is None
    assert WorkerArgs.from_cmdline(["python", "-m", "pytest", "rbee.worker.server"]) is None
    bad_port = [*WORKER.command(), "--port", "x"]
    assert WorkerArgs.from_cmdline(bad_port) is None
    assert not HiveArgs.runs_in(WORKER.command())
    assert HiveArgs.runs_in(HIVE.command())
    assert WorkerArgs.from_cmdline(RPC_SERVER.command()) is None
    assert RpcServerArgs.from_cmdline(WORKER.command()) is None


@pytest.mark.parametrize("cls", [HiveArgs, QueenArgs])
def test_a_token_is_accepted_as_a_flag_but_never_written_to_a_command_line(
    cls: type[CommandLine],
) -> None:
    args = cls.parse_cli(["--token", "s3cret"])
    assert args.token == "s3cret"
    assert "s3cret" not in args.to_argv()
    assert "s3cret" not in args.model_dump_json()


def test_what_a_worker_runs_is_every_spawn_field_but_its_identity() -> None:
    assert list(WORKER.spec()) == [
        "slots", "ctx_size", "prompt_cache", "device", "worker_binary", "chat_format",
        "split_mode", "tensor_split", "gpu_layers", "rpc", "threads",
    ]  # fmt: skip
    spawn = SpawnWorker.model_validate(WORKER.model_dump())
    assert spawn.spec() == WORKER.spec()


def test_defaults_live_once_and_the_yaml_shares_them() -> None:
    from rbee.config.models import Deployment

    deployment = Deployment(model="m", worker="cpu")
    spawn = SpawnWorker(worker_id="w", hive="h", model="m", queen_url="http://q:1")
    assert (deployment.slots, deployment.ctx_size, deployment.device) == (
        spawn.slots,
        spawn.ctx_size,
        spawn.device,
    )
    minimal = ["--worker-id=w", "--hive=h", "--model=m", "--model-path=/m", "--port=0"]
    worker = WorkerArgs.parse_cli([*minimal, "--queen-url=http://q:1"])
    assert worker.spec() == spawn.spec()


def test_a_bad_value_is_a_usage_error_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        WorkerArgs.parse_cli([*WORKER.to_argv(), "--slots", "0"])
    assert exit_.value.code == 2
    assert "--slots: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_help_explains_every_flag_and_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        WorkerArgs.parse_cli(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--ctx-size CTX_SIZE context tokens per slot (default: 4096)" in text
    assert "--model-path MODEL_PATH path of the GGUF file" in text
