"""`rbee init`: a first cluster YAML, from flags in a script or from answers on a terminal,
that `rbee validate` accepts and `rbee fmt` leaves as it is."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from syrupy.assertion import SnapshotAssertion

from rbee.cli.init import InitAnswers, ModelFacts, cluster_yaml, default_model_name, model_source
from rbee.config.fmt import formatted
from rbee.config.load import load_cluster
from rbee.config.models import Hive, Ssh
from rbee.wire import Capabilities, Gpu
from tests.fixtures.cluster import rbee_in, wait_until
from tests.fixtures.hub import FakeHub
from tests.fixtures.ports import free_port

SSH_CONFIG = """\
Host gpu1
    HostName 10.0.0.11
    User rbee
    Port 2222
    IdentityFile ~/.ssh/id_ed25519

Host gpu2
    HostName gpu2.lan

Host *
    ServerAliveInterval 30
"""
REPO = "rbee-test/tiny-GGUF"
HUB_SOURCE = f"hf://{REPO}/tiny-Q4_K_M.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME (and working directory) whose ~/.ssh/config lists gpu1 and gpu2."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(SSH_CONFIG)
    return tmp_path


@pytest.fixture(scope="session")
def gguf_sha256(gguf: Path) -> str:
    with gguf.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "tiny-Q4_K_M.gguf"
    path.parent.mkdir()
    path.write_bytes(os.urandom(1 << 16))
    return path


# --- from flags --------------------------------------------------------------------------------


@pytest.mark.slow
def test_flags_write_a_commented_cluster_that_validates(
    home: Path, gguf: Path, gguf_sha256: str
) -> None:
    result = rbee_in(
        home, "init", "--model", str(gguf), "--model-name", "gemma", "--ssh-host", "gpu1",
        "--ssh-host", "gpu2", "--replicas", "2", "--yes",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cluster = load_cluster(home / "cluster.yaml")
    [model] = cluster.models
    assert (model.name, model.source, model.sha256) == ("gemma", f"file://{gguf}", gguf_sha256)
    assert [hive.name for hive in cluster.hives] == ["local", "gpu1", "gpu2"]
    gpu1 = cluster.hives[1]
    assert (gpu1.host, gpu1.effective_mode) == ("10.0.0.11", "network")
    assert gpu1.ssh == Ssh(user="rbee", port=2222, key="~/.ssh/id_ed25519")
    [deployment] = cluster.deployments
    assert (deployment.model, deployment.replicas) == ("gemma", 2)
    assert deployment.hives == ["local", "gpu1", "gpu2"]
    text = (home / "cluster.yaml").read_text()
    assert any(line.lstrip().startswith("# ") for line in text.splitlines())
    assert "rbee validate" in result.stdout and "rbee apply" in result.stdout


def test_an_existing_file_is_kept_without_force(home: Path, blob: Path) -> None:
    mine = "# my cluster\nversion: 1\n"
    (home / "cluster.yaml").write_text(mine)
    refused = rbee_in(home, "init", "--model", str(blob), "--yes")
    assert refused.returncode == 1
    assert "cluster.yaml already exists" in refused.stderr
    assert "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (home / "cluster.yaml").read_text() == mine


def test_force_rewrites_an_existing_file(home: Path, blob: Path) -> None:
    (home / "cluster.yaml").write_text("# my cluster\nversion: 1\n")
    result = rbee_in(home, "init", "--model", str(blob), "--model-name", "tiny", "--force", "-y")
    assert result.returncode == 0, result.stderr
    assert [m.name for m in load_cluster(home / "cluster.yaml").models] == ["tiny"]


def test_without_a_terminal_nothing_is_asked_and_defaults_decide(home: Path, blob: Path) -> None:
    """Stdin is no terminal: no prompt, no --yes needed; no Host becomes a hive unless named."""
    result = subprocess.run(
        [sys.executable, "-m", "rbee.cli", "init", "--model", str(blob), "-f", "lab.yaml"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home)},
        cwd=home,
    )
    assert result.returncode == 0, result.stderr
    cluster = load_cluster(home / "lab.yaml")
    assert [hive.name for hive in cluster.hives] == ["local"]
    assert [(d.model, d.replicas) for d in cluster.deployments] == [("tiny-q4_k_m", 1)]
    assert "rbee plan -f lab.yaml" in result.stdout


def test_an_unknown_ssh_host_is_an_error_naming_the_known_ones(home: Path, blob: Path) -> None:
    result = rbee_in(home, "init", "--model", str(blob), "--ssh-host", "gpu9", "--yes")
    assert result.returncode == 1
    assert "no Host gpu9" in result.stderr and "gpu1, gpu2" in result.stderr
    assert not (home / "cluster.yaml").exists()


def test_an_https_source_needs_its_sha256(home: Path) -> None:
    result = rbee_in(home, "init", "--model", "https://example.com/m.gguf", "--yes")
    assert result.returncode == 1
    assert "needs its sha256" in result.stderr and "--sha256" in result.stderr
    assert not (home / "cluster.yaml").exists()


# --- hf:// sources -----------------------------------------------------------------------------


def test_the_hubs_sha256_is_pinned(home: Path, hub: FakeHub, blob: Path) -> None:
    served = hub.add(REPO, "tiny-Q4_K_M.gguf", blob)
    result = rbee_in(home, "init", "--model", HUB_SOURCE, "--yes")
    assert result.returncode == 0, result.stderr
    [model] = load_cluster(home / "cluster.yaml").models
    assert (model.source, model.sha256) == (HUB_SOURCE, served.sha256)
    assert "The sha256 the Hub publishes" in (home / "cluster.yaml").read_text()
    assert hub.sent == 0  # metadata only: not a byte of the file


def test_an_unreachable_hub_leaves_the_sha256_out_saying_how_to_pin_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    result = rbee_in(home, "init", "--model", HUB_SOURCE, "--yes")
    assert result.returncode == 0, result.stderr
    [model] = load_cluster(home / "cluster.yaml").models
    assert model.sha256 is None
    text = (home / "cluster.yaml").read_text()
    assert f"# No sha256: the Hub could not be asked (cannot reach {endpoint})" in text
    assert "add `sha256:`" in text


def test_a_file_the_hub_does_not_have_is_an_error(home: Path, hub: FakeHub, blob: Path) -> None:
    hub.add(REPO, "other.gguf", blob)
    result = rbee_in(home, "init", "--model", HUB_SOURCE, "--yes")
    assert result.returncode == 1
    assert f"no file tiny-Q4_K_M.gguf in {REPO}" in result.stderr
    assert not (home / "cluster.yaml").exists()


# --- on a terminal -----------------------------------------------------------------------------


@dataclass
class Terminal:
    """A tmux session of its own server (its own socket): type into it, read its screen."""

    tmux: str
    socket: Path

    def run(self, *args: str) -> str:
        command = [self.tmux, "-S", str(self.socket), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def screen(self) -> list[str]:
        return [line for line in self.run("capture-pane", "-p").splitlines() if line.strip()]

    def answer(self, prompt: str, keys: str, timeout: float = 60) -> None:
        """Wait until the cursor's line is `prompt…:` (a question waiting), then type `keys`."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            last = screen[-1].rstrip() if screen else ""
            if last.startswith(prompt) and last.endswith(":"):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no prompt {prompt!r} on the screen:\n" + "\n".join(screen))
            time.sleep(0.1)
        self.run("send-keys", "-l", keys)
        self.run("send-keys", "Enter")


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    tmux = shutil.which("tmux")
    assert tmux is not None, "the terminal test needs tmux: `make system-deps` installs it"
    term = Terminal(tmux, tmp_path / "tmux.sock")
    try:
        yield term
    finally:
        subprocess.run([tmux, "-S", str(term.socket), "kill-server"], capture_output=True)


@pytest.mark.slow
def test_on_a_terminal_the_answers_make_the_cluster(
    home: Path,
    gguf: Path,
    gguf_sha256: str,
    terminal: Terminal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done = home / "done"
    cd, python = shlex.quote(str(home)), shlex.quote(sys.executable)
    command = f"cd {cd} && HOME={cd} {python} -m rbee.cli init; echo EXIT=$? > {done.name}"
    terminal.run("new-session", "-d", "-s", "init", "-x", "200", "-y", "50", command)
    terminal.answer("Model (hf://", str(gguf))
    terminal.answer("Model name [gemma-3-270m-q4_k_m]", "tiny-gemma")
    terminal.answer("Hosts to add as hives (names, all or none) [none]", "gpu2")
    terminal.answer("Run a hive on this machine too? [Y/n]", "n")
    terminal.answer("Workers per hive [1]", "2")
    terminal.answer("Queen URL (the network hives must reach it)", "http://10.0.0.1:7833")
    wait_until("rbee init to end", done.exists)
    assert done.read_text().strip() == "EXIT=0"
    monkeypatch.setenv("RBEE_TOKEN", "t0ken")
    cluster = load_cluster(home / "cluster.yaml")
    [model] = cluster.models
    assert (model.name, model.sha256) == ("tiny-gemma", gguf_sha256)
    assert [hive.name for hive in cluster.hives] == ["gpu2"]
    assert [(d.hives, d.replicas) for d in cluster.deployments] == [(["gpu2"], 2)]
    assert (cluster.queen.url, cluster.queen.token) == ("http://10.0.0.1:7833", "t0ken")


# --- the YAML, from fixed answers --------------------------------------------------------------

CPU = Capabilities(
    hostname="laptop",
    os="linux",
    arch="x86_64",
    cpu_count=8,
    ram_total_bytes=16 << 30,
    ram_available_bytes=12 << 30,
    python="3.11",
)
GPUS = [Gpu(index=i, name="NVIDIA H100 80GB HBM3", memory_total_mib=81559) for i in (0, 1)]
CUDA = {"gpus": GPUS, "backends": ["cpu", "cuda"], "nvcc": "/usr/bin/nvcc"}
GPU_BOX = CPU.model_copy(update={"hostname": "gpubox", **CUDA})
NETWORK = (
    Hive(name="gpu1", host="10.0.0.11", mode="network", ssh=Ssh(user="rbee", port=2222)),
    Hive(name="edge", host="2001:db8::12", mode="network", ssh=Ssh(key="~/.ssh/id_ed25519")),
)
LOOPBACK_QUEEN = "http://127.0.0.1:7833"
CASES = {
    "cpu_machine_with_a_local_file": InitAnswers(
        model=ModelFacts("tiny", "file:///models/tiny.gguf", SHA256, pinned_by="file"),
        machine=CPU,
        local="local",
        queen_url=LOOPBACK_QUEEN,
    ),
    "gpu_machine_and_ssh_hosts_with_an_unpinned_hub_model": InitAnswers(
        model=ModelFacts(
            "gemma", "hf://org/repo/gemma.gguf@v1", unpinned_because="cannot reach the Hub"
        ),
        machine=GPU_BOX,
        local="local",
        queen_url="http://10.0.0.1:7833",
        ssh_hives=NETWORK,
        replicas=2,
    ),
    "gpu_without_nvcc_runs_on_the_cpu": InitAnswers(
        model=ModelFacts("tiny", "file:///models/tiny.gguf", SHA256, pinned_by="flag"),
        machine=GPU_BOX.model_copy(update={"nvcc": None}),
        local="local",
        queen_url=LOOPBACK_QUEEN,
    ),
    "network_hives_only_with_the_hubs_sha256_and_an_unknown_machine": InitAnswers(
        model=ModelFacts("gemma", "hf://org/repo/gemma.gguf", SHA256, pinned_by="hub"),
        machine=None,
        local=None,
        queen_url=LOOPBACK_QUEEN,
        ssh_hives=NETWORK,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_yaml_for_fixed_answers(case: str, snapshot: SnapshotAssertion) -> None:
    assert cluster_yaml(CASES[case]) == snapshot


@pytest.mark.parametrize("case", CASES)
def test_the_yaml_validates_and_is_already_formatted(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RBEE_TOKEN", "t0ken")
    path = tmp_path / "cluster.yaml"
    path.write_text(cluster_yaml(CASES[case]))
    load_cluster(path)
    text, tidy = formatted(path)
    assert text == tidy


def test_a_hub_pages_url_becomes_an_hf_source() -> None:
    page = "https://huggingface.co/ggml-org/gemma-3-270m-GGUF/blob/main/gemma-3-270m-Q4_K_M.gguf"
    assert model_source(page) == ("hf://ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q4_K_M.gguf", None)
    pinned = "https://huggingface.co/org/repo/resolve/v1/sub/m.gguf?download=true"
    assert model_source(pinned) == ("hf://org/repo/sub/m.gguf@v1", None)


def test_the_default_name_comes_from_the_file_name() -> None:
    assert default_model_name("hf://org/repo/Qwen3-8B-Q4_K_M.gguf@main") == "qwen3-8b-q4_k_m"
    assert default_model_name("file:///m/Big Model-00001-of-00003.gguf") == "big-model"
