"""Three network hives over real SSH: from nothing to serving, no-op, errors, upgrade.

Each hive is a network namespace with its own user, home and sshd; the queen listens on the
bridge's address with a token, and reaches its hives and workers over mutual TLS with the
identities it issued them (the token never leaves the queen's machine); the keeper is the real
`rbee` CLI. The tests of this module run in order against one cluster.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from ruamel.yaml import YAML

from rbee.pki import client_context
from tests.fixtures.capture import capture
from tests.fixtures.cluster import run_rbee
from tests.fixtures.hub import fake_hub
from tests.fixtures.netns import SshHost, netns_hosts, require_lab
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow

APPLY_TIMEOUT_S = 600


@dataclass
class NetworkCluster:
    hosts: list[SshHost]
    home: Path
    config: Path
    queen_url: str
    token: str
    model: Path
    env: dict[str, str]

    def write(
        self,
        hives: list[dict[str, Any]],
        replicas: int = 1,
        more_models: list[dict[str, Any]] | None = None,
        self_heal: dict[str, Any] | bool = False,
    ) -> None:
        """The cluster YAML; `more_models` are declared on every hive without workers.

        Self-heal is off unless asked for: these tests break hives on purpose and expect
        each apply to find them as they left them.
        """
        extra = more_models or []
        body = {
            "version": 1,
            "queen": {"url": self.queen_url, "token": "${RBEE_TOKEN}"},
            "self_heal": self_heal,
            "hives": hives,
            "models": [{"name": "gemma3-270m", "source": f"file://{self.model}"}, *extra],
            "worker_binaries": [{"name": "cpu"}],
            "deployments": [
                {
                    "model": "gemma3-270m",
                    "worker": "cpu",
                    "hives": "all",
                    "replicas": replicas,
                    "slots": 1,
                    "ctx_size": 512,
                },
                *(
                    {"model": m["name"], "worker": "cpu", "hives": "all", "replicas": 0}
                    for m in extra
                ),
            ],
        }
        self.config.write_text(json.dumps(body, indent=2))  # JSON is YAML

    def good_hives(self) -> list[dict[str, Any]]:
        return [_hive_yaml(h) for h in self.hosts]

    def rbee(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_rbee(self.config, self.env, *args, check=check, timeout=APPLY_TIMEOUT_S)

    def get(self, path: str) -> Any:
        headers = {"authorization": f"Bearer {self.token}"}
        return httpx.get(f"{self.queen_url}{path}", headers=headers, timeout=10).json()

    def as_queen(self) -> ssl.SSLContext:
        """A TLS client context holding the queen's certificate (as the queen calls hives)."""
        return client_context(self.home / ".local/state/rbee/tls/queen.pem")

    def chat(self, content: str = "Hi") -> httpx.Response:
        body = {
            "model": "gemma3-270m",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 4,
        }
        headers = {"authorization": f"Bearer {self.token}"}
        return httpx.post(
            f"{self.queen_url}/v1/chat/completions", json=body, headers=headers, timeout=60
        )


def _hive_yaml(host: SshHost, **ssh: Any) -> dict[str, Any]:
    return {
        "name": f"h{host.index}",
        "host": host.address,
        "mode": "network",
        "ssh": {
            "user": host.user,
            "port": host.port,
            "key": str(host.key),
            "known_hosts": str(host.known_hosts),
            **ssh,
        },
    }


def _gateway(host: SshHost) -> str:
    return str(ipaddress.ip_interface(f"{host.address}/24").network.network_address + 1)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[NetworkCluster]:
    require_lab()
    home = tmp_path_factory.mktemp("keeper")
    # Every hive user reads the model through file://, so it lies where all of them can read.
    shared = Path(tempfile.mkdtemp(prefix="rbee-netns-model-"))
    shared.chmod(0o755)
    model = shared / "gemma-3-270m-q4_k_m.gguf"
    shutil.copyfile(gguf, model)
    model.chmod(0o644)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, shared, ignore_errors=True)
        hosts = cleanup.enter_context(netns_hosts(3))
        gateway = _gateway(hosts[0])
        token = secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_")}
        env.update(HOME=str(home), RBEE_TOKEN=token)
        # The queen builds the hives' wheelhouse: share the tests' cache of it, and pip's
        # cache (where llama-cpp-python's compiled wheel is) from the real home.
        env.setdefault("RBEE_WHEELHOUSE", str(Path.home() / ".cache" / "rbee-test" / "wheelhouse"))
        env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
        cluster = NetworkCluster(
            hosts=hosts,
            home=home,
            config=home / "cluster.yaml",
            queen_url=f"http://{gateway}:{free_port(gateway)}",
            token=token,
            model=model,
            env=env,
        )
        cluster.write(cluster.good_hives())
        try:
            yield cluster
        finally:
            cluster.write(cluster.good_hives())
            down = cluster.rbee("down", check=False)
            assert "stopped queen" in down.stdout, down.stdout + down.stderr


def test_apply_installs_three_network_hives_and_their_workers(net: NetworkCluster) -> None:
    """Every hive and worker serves https with its own identity; no hive holds the token."""
    plan = net.rbee("plan")
    for host in net.hosts:
        assert f"+ hive.h{host.index}" in plan.stdout
        assert "install rbee 0.1.0 and start the hive" in plan.stdout
    net.rbee("apply", "--auto-approve")
    workers = net.get("/v1/workers")
    assert sorted(w["hive"] for w in workers) == ["h0", "h1", "h2"]
    by_hive = {w["hive"]: w for w in workers}
    for host in net.hosts:
        worker = by_hive[f"h{host.index}"]
        assert worker["state"] == "idle"
        assert worker["url"].startswith(f"https://{host.address}:")
        hive_pid = host.run("cat", f"{host.home}/.local/state/rbee/hive.pid").stdout.strip()
        environ = Path(f"/proc/{hive_pid}/environ").read_bytes()
        assert b"RBEE_TOKEN" not in environ and net.token.encode() not in environ
        identity = host.home / ".local/state/rbee/tls/hive.pem"
        assert stat.S_IMODE(identity.stat().st_mode) == 0o600
        anonymous = ssl.create_default_context(cafile=net.home / ".local/state/rbee/tls/ca.pem")
        for url in (f"https://{host.address}:7835/v1/models", f"{worker['url']}/health"):
            with pytest.raises(httpx.TransportError):  # no certificate of the cluster
                httpx.get(url, verify=anonymous, timeout=5)
            assert httpx.get(url, verify=net.as_queen(), timeout=5).status_code == 200
    records = net.get("/v1/hives")
    assert {(r["name"], r["state"]) for r in records} == {
        ("h0", "online"),
        ("h1", "online"),
        ("h2", "online"),
    }


def test_inference_through_the_queen_reaches_every_hive(net: NetworkCluster) -> None:
    served = set()
    for n in range(6):  # six conversations: none cached anywhere, each goes to the least loaded
        response = net.chat(f"Hi, I am number {n}.")
        assert response.status_code == 200, response.text
        served.add(response.headers["x-rbee-worker"])
    assert served == {"h0.gemma3-270m.0", "h1.gemma3-270m.0", "h2.gemma3-270m.0"}


def test_a_tap_on_the_lan_sees_no_token_no_key_and_no_prompt(net: NetworkCluster) -> None:
    """A raw capture on every hive's link to the bridge, through a plan, an apply and
    inference with an API key: what crosses the LAN between queen, hives and workers is TLS
    (and SSH): no token, no key, no prompt, no HTTP in clear."""
    marker = secrets.token_hex(12)
    made = httpx.post(
        f"{net.queen_url}/v1/keys",
        json={"name": f"tap-{marker[:6]}", "scope": "inference"},
        headers={"authorization": f"Bearer {net.token}"},
        timeout=10,
    )
    key = made.json()["key"]
    body = {
        "model": "gemma3-270m",
        "messages": [{"role": "user", "content": f"Repeat after me: {marker}"}],
        "max_tokens": 4,
    }
    with contextlib.ExitStack() as taps:
        seen = [taps.enter_context(capture(host.veth)) for host in net.hosts]
        net.rbee("plan")
        net.rbee("apply", "--auto-approve")
        for stream in (False, True, False, True):
            answer = httpx.post(
                f"{net.queen_url}/v1/chat/completions",
                json={**body, "stream": stream},
                headers={"authorization": f"Bearer {key}"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
    wire = b"".join(tap.data for tap in seen)
    assert sum(tap.size() for tap in seen) > 20_000  # the tap saw the traffic
    for secret in (net.token, key, marker, "Repeat after me"):
        assert secret.encode() not in wire, secret
    for clear in (b"HTTP/1.1", b"POST /v1/", b"/v1/workers/heartbeat", b"authorization"):
        assert clear not in wire, clear


def test_a_third_host_without_a_certificate_completes_no_request(net: NetworkCluster) -> None:
    """From another machine of the LAN (a namespace host of its own), trusting the cluster's
    CA but holding no certificate of it: a hive and a worker elsewhere answer nothing."""
    stranger, target = net.hosts[2], net.hosts[0]
    [worker] = [w for w in net.get("/v1/workers") if w["hive"] == f"h{target.index}"]
    ca = Path(tempfile.mkdtemp(prefix="rbee-stranger-")) / "ca.pem"
    shutil.copyfile(net.home / ".local/state/rbee/tls/ca.pem", ca)
    ca.parent.chmod(0o755)
    ca.chmod(0o644)
    script = (
        "import ssl, sys, urllib.request\n"
        "context = ssl.create_default_context(cafile=sys.argv[1])\n"
        "context.check_hostname = False\n"
        "for url in sys.argv[2:]:\n"
        "    try:\n"
        "        with urllib.request.urlopen(url, timeout=5, context=context) as answer:\n"
        "            print(answer.status)\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__)\n"
    )
    urls = [
        f"https://{target.address}:7835/v1/models",
        f"https://{target.address}:7835/v1/worker-processes",
        f"{worker['url']}/v1/models",
    ]
    try:
        tried = stranger.run("python3", "-c", script, str(ca), *urls).stdout.split()
    finally:
        shutil.rmtree(ca.parent, ignore_errors=True)
    assert len(tried) == len(urls)
    assert not any(outcome.isdigit() for outcome in tried), tried
    # The same requests with the queen's certificate are answered: the refusal is the
    # missing certificate, not the network.
    for url in urls:
        assert httpx.get(url, verify=net.as_queen(), timeout=5).status_code == 200


def test_network_hives_and_their_workers_logs_come_through_the_queen(
    net: NetworkCluster,
) -> None:
    """The keeper asks the queen, which asks the hive over HTTP: no SSH from the keeper."""
    host = net.hosts[1]

    def logs(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "rbee.cli", "logs", *args, "--file", str(net.config)]
        return subprocess.run(command, env=net.env, capture_output=True, text=True, timeout=60)

    hive = logs("hive", "h1", "-n", "10000")
    assert hive.returncode == 0, hive.stderr
    assert f"listening host={host.address} port=7835 name=h1" in hive.stdout
    written = (host.home / ".local/state/rbee/workers/h1.gemma3-270m.0.log").read_text()
    worker = logs("worker", "h1.gemma3-270m.0", "-n", "3")
    assert worker.returncode == 0, worker.stderr
    assert worker.stdout.splitlines() == written.splitlines()[-3:]


def test_second_apply_is_a_noop(net: NetworkCluster) -> None:
    result = net.rbee("plan", "--detailed-exitcode", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes." in result.stdout


def test_ci_on_another_host_plans_through_the_remote_queen_with_an_admin_key(
    net: NetworkCluster, tmp_path: Path
) -> None:
    """A CI runner on another host: RBEE_QUEEN_URL names the queen, RBEE_API_KEY is an admin
    key, no cluster token; the YAML's own queen URL (loopback here) is never started."""
    key = net.rbee("key", "create", "ci", "--scope", "admin").stdout.strip().splitlines()[-1]
    local_port = free_port("127.0.0.1")
    ci = json.loads(net.config.read_text())
    ci["queen"] = {"url": f"http://127.0.0.1:{local_port}"}
    config = tmp_path / "cluster.yaml"
    config.write_text(json.dumps(ci))
    runner = net.hosts[0]  # its namespace is the CI machine: the queen is across the bridge
    env = {k: v for k, v in net.env.items() if k != "RBEE_TOKEN"}
    env.update(HOME=str(tmp_path), RBEE_QUEEN_URL=net.queen_url)

    def ci_rbee(*args: str, api_key: str) -> subprocess.CompletedProcess[str]:
        command = ["ip", "netns", "exec", runner.namespace, sys.executable, "-m", "rbee.cli"]
        return subprocess.run(
            [*command, *args, "-f", str(config)],
            env={**env, "RBEE_API_KEY": api_key},
            capture_output=True,
            text=True,
            timeout=120,
        )

    plan = ci_rbee("plan", "--detailed-exitcode", api_key=key)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "No changes" in plan.stdout
    status = ci_rbee("status", "--json", api_key=key)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["queen"]["url"]

    refused = ci_rbee("plan", api_key="rbee-not-a-key")
    assert refused.returncode == 1
    assert f"the queen {net.queen_url}" in refused.stderr and "401" in refused.stderr
    assert "RBEE_API_KEY" in refused.stderr and "Traceback" not in refused.stderr

    env["RBEE_QUEEN_URL"] = f"http://{_gateway(runner)}:{free_port(_gateway(runner))}"
    down = ci_rbee("plan", api_key=key)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert f"the queen at {env['RBEE_QUEEN_URL']} (RBEE_QUEEN_URL) is not answering" in (
        down.stderr
    )
    assert "never starts a queen when RBEE_QUEEN_URL is set" in down.stderr
    # Nothing was started in the runner's namespace on the YAML's loopback queen URL.
    listening = subprocess.run(
        ["ip", "netns", "exec", runner.namespace, "ss", "-Htln", f"sport = :{local_port}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert listening.stdout.strip() == ""


def test_ssh_test_reports_the_machine(net: NetworkCluster) -> None:
    result = net.rbee("hive", "ssh-test", "h1")
    assert "ok h1" in result.stdout
    assert "rbee 0.1.0" in result.stdout and "hive running (pid" in result.stdout
    facts = json.loads(net.rbee("hive", "ssh-test", "h1", "--json").stdout)
    assert facts["python_version"].startswith("3.11") and facts["arch"]


def test_import_ssh_prints_hive_stanzas_from_the_queens_ssh_config(net: NetworkCluster) -> None:
    host = net.hosts[0]
    ssh_dir = net.home / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    (ssh_dir / "config").write_text(
        f"Host lab-{host.index}\n  HostName {host.address}\n  User {host.user}\n"
        f"  IdentityFile {host.key}\nHost *\n  ServerAliveInterval 30\n"
    )
    result = net.rbee("hive", "import-ssh")
    stanzas = YAML(typ="safe").load(result.stdout)["hives"]
    assert stanzas == [
        {
            "name": f"lab-{host.index}",
            "host": host.address,
            "mode": "network",
            "ssh": {"user": host.user, "key": str(host.key)},
        }
    ]


def test_broken_hives_each_fail_clearly_and_the_good_one_proceeds(
    net: NetworkCluster, tmp_path: Path
) -> None:
    good, other, third = net.hosts
    stranger = tmp_path / "stranger_key"
    stranger.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    stranger.chmod(0o600)
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    down_address = str(ipaddress.ip_interface(f"{good.address}/24").network.network_address + 250)
    hives = [
        _hive_yaml(good),
        {**_hive_yaml(other), "name": "unknown-key"}
        | {"ssh": {**_hive_yaml(other)["ssh"], "known_hosts": str(empty_known_hosts)}},
        {**_hive_yaml(other), "name": "wrong-key"}
        | {"ssh": {**_hive_yaml(other)["ssh"], "key": str(stranger)}},
        {**_hive_yaml(third), "name": "wrong-user"}
        | {"ssh": {**_hive_yaml(third)["ssh"], "user": "nobody"}},
        {**_hive_yaml(third), "name": "port-closed"}
        | {"ssh": {**_hive_yaml(third)["ssh"], "port": 2},
           "port": 7836},
        {**_hive_yaml(third), "name": "host-down", "host": down_address},
    ]  # fmt: skip
    net.write(hives, replicas=2)

    plan = net.rbee("plan", check=False)
    assert plan.returncode == 1
    expected = {
        "unknown-key": "is not in",
        "wrong-key": f"refused the key {stranger}",
        "wrong-user": f"nobody@{third.address} refused the key",
        "port-closed": "refused",
        "host-down": "cannot reach",
    }
    errors = {
        line.split(":", 2)[1].strip().removeprefix("hive."): line
        for line in plan.stdout.splitlines()
        if line.startswith("Error: hive.")
    }
    assert set(errors) == set(expected), plan.stdout
    for name, words in expected.items():
        assert words in errors[name], errors[name]
    assert "+ worker.h0.gemma3-270m[1]" in plan.stdout

    ssh_test = net.rbee("hive", "ssh-test", "wrong-key", check=False)
    assert ssh_test.returncode == 1
    assert "auth_failed" in ssh_test.stderr and "Traceback" not in ssh_test.stderr

    apply = net.rbee("apply", "--auto-approve", check=False)
    assert apply.returncode == 1
    assert "worker.h0.gemma3-270m[1]: done" in apply.stdout
    for name in expected:
        assert f"hive.{name}" in apply.stderr
    assert sum(w["hive"] == "h0" for w in net.get("/v1/workers")) == 2


def test_an_old_install_is_upgraded_and_its_workers_restored(net: NetworkCluster) -> None:
    net.write(net.good_hives())
    net.rbee("apply", "--auto-approve")
    host = net.hosts[2]
    before = {w["worker_id"]: w["pid"] for w in net.get("/v1/workers")}
    # Make h2 look like an install of rbee 0.0.9, as an older keeper would have left it.
    site = ".local/share/rbee/venv/lib/python3.11/site-packages"
    host.run(
        "sh",
        "-c",
        f"cd ~/{site} && sed -i 's/^__version__ = .*/__version__ = \"0.0.9\"/' rbee/__init__.py"
        " && sed -i 's/^Version: .*/Version: 0.0.9/' rbee-*.dist-info/METADATA",
    )
    plan = net.rbee("plan")
    assert "-/+ hive.h2" in plan.stdout and "upgrade rbee 0.0.9 → 0.1.0" in plan.stdout
    assert "-/+ worker.h2.gemma3-270m[0]" in plan.stdout
    assert "hive.h0" not in plan.stdout and "hive.h1" not in plan.stdout
    net.rbee("apply", "--auto-approve")
    after = {w["worker_id"]: w["pid"] for w in net.get("/v1/workers")}
    assert set(after) == set(before)
    assert after["h2.gemma3-270m.0"] != before["h2.gemma3-270m.0"]
    assert after["h0.gemma3-270m.0"] == before["h0.gemma3-270m.0"]
    version = host.run(
        f"{host.home}/.local/share/rbee/venv/bin/python",
        "-c",
        "import rbee; print(rbee.__version__)",
    )
    assert version.stdout.strip() == "0.1.0"
    assert net.rbee("plan", "--detailed-exitcode", check=False).returncode == 0


def test_a_url_model_leaves_the_source_once_and_the_hives_copy_it(net: NetworkCluster) -> None:
    gateway = _gateway(net.hosts[0])
    for hub in fake_hub(host=gateway, cdn_host=gateway):
        served = hub.add("org/repo", "gemma.gguf", net.model)
        url = f"{hub.cdn_url}/cdn/{served.sha256}"
        net.write(
            net.good_hives(),
            more_models=[{"name": "gemma-url", "source": url, "sha256": served.sha256}],
        )
        plan = net.rbee("plan")
        assert plan.stdout.count("copied from h0 over the LAN") == 2, plan.stdout
        net.rbee("apply", "--auto-approve")
        assert hub.sent == served.size  # one transfer from the source for three hives
    for host in net.hosts:
        payload = host.home / ".cache" / "rbee" / "models" / "gemma-url" / "payload"
        assert payload.stat().st_size == served.size
    assert net.rbee("plan", "--detailed-exitcode", check=False).returncode == 0
    net.write(net.good_hives())


def test_a_killed_hive_daemon_is_restarted_over_ssh_and_its_workers_adopted(
    net: NetworkCluster,
) -> None:
    net.write(net.good_hives(), self_heal={"interval": "5s"})
    net.rbee("apply", "--auto-approve")
    host = net.hosts[1]
    before = sorted((w["worker_id"], w["pid"]) for w in net.get("/v1/workers"))
    pid = host.run("cat", f"{host.home}/.local/state/rbee/hive.pid").stdout.strip()
    host.run("kill", "-KILL", pid)
    killed = time.monotonic()
    hive_url, as_queen = f"https://{host.address}:7835", net.as_queen()
    while True:
        with contextlib.suppress(httpx.TransportError):
            health = httpx.get(f"{hive_url}/health", verify=as_queen, timeout=2).json()
            if health["pid"] != int(pid):
                break
        assert time.monotonic() - killed < 30, "the hive was not restarted within 30 s"
        time.sleep(0.5)
    # Its worker outlived it and is adopted: the same processes, none spawned twice.
    assert sorted((w["worker_id"], w["pid"]) for w in net.get("/v1/workers")) == before
    listed = httpx.get(f"{hive_url}/v1/worker-processes", verify=as_queen, timeout=5).json()
    assert [(p["worker_id"], p["pid"]) for p in listed] == [
        (w, p) for w, p in before if w.startswith("h1.")
    ]
    heal = net.get("/v1/history?limit=5")["applies"]
    healed = [e for e in heal if e["kind"] == "self-heal"]
    assert healed and healed[0]["done"] == ["hive.h1"], heal
    # What set it off is whichever check ran first after the kill (the hive monitor's, the
    # periodic one, or one a moment earlier event started); what it did is the same.
    assert "hive.h1" in healed[0]["reasons"] and healed[0]["trigger"], healed[0]
    assert net.chat().status_code == 200
    assert net.rbee("plan", "--detailed-exitcode", check=False).returncode == 0


# Greedy prompts whose next tokens are no near-ties (the batching tests' own): one host and a
# split answer them alike, token for token.
_SPAN_PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):"]


def _write_span(net: NetworkCluster, self_heal: dict[str, Any] | bool = False) -> None:
    """gemma on h2 alone (one host), and a worker on h0 that spans h1 over llama.cpp's RPC."""
    net.write(net.good_hives(), self_heal=self_heal)
    body = json.loads(net.config.read_text())
    one = {"model": "gemma3-270m", "worker": "cpu", "slots": 1, "ctx_size": 512}
    body["deployments"] = [
        {**one, "hives": ["h2"]},
        {**one, "name": "split", "hives": ["h0"], "span": ["h1"]},
    ]
    net.config.write_text(json.dumps(body, indent=2))


def _greedy(net: NetworkCluster, worker: dict[str, Any]) -> list[str]:
    texts = []
    for prompt in _SPAN_PROMPTS:
        body = {"prompt": prompt, "max_tokens": 16, "temperature": 0}
        answer = httpx.post(
            f"{worker['url']}/v1/completions", json=body, verify=net.as_queen(), timeout=120
        )
        assert answer.status_code == 200, answer.text
        texts.append(answer.json()["choices"][0]["text"])
    return texts


def _workers(net: NetworkCluster) -> dict[str, dict[str, Any]]:
    return {w["worker_id"]: w for w in net.get("/v1/workers")}


def _rpc_servers(net: NetworkCluster, host: SshHost) -> list[dict[str, Any]]:
    url = f"https://{host.address}:7835/v1/rpc-servers"
    listed: list[dict[str, Any]] = httpx.get(url, verify=net.as_queen(), timeout=5).json()
    return listed


def _gate_received(host: SshHost) -> int:
    """Bytes the RPC gate of `host` received on its connections (TCP's own count)."""
    listed = subprocess.run(
        ["ip", "netns", "exec", host.namespace, "ss", "-tinH", "state", "established",
         "( sport = :7836 )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sum(int(n) for n in re.findall(r"bytes_received:(\d+)", listed))


def test_a_worker_spanning_another_hive_answers_as_one_host_does(net: NetworkCluster) -> None:
    """h0's worker keeps its first layers and its output layer, h1's RPC server holds the
    other blocks; greedy answers are the one-host worker's, token for token.
    (Self-heal is on, for the last of these tests.)"""
    _write_span(net, self_heal={"interval": "5s"})
    plan = net.rbee("plan")
    assert "+ rpc_server.h1" in plan.stdout, plan.stdout
    assert "h1/cpu (rpc)" in plan.stdout, plan.stdout
    planned = json.loads(net.rbee("plan", "--json").stdout)
    [head] = [a for a in planned["actions"] if a["address"] == "worker.h0.split[0]"]
    [lent] = [share for share in head["placement"] if share["rpc"]]
    assert lent["hive"] == "h1" and lent["weights_bytes"] > 10_000_000, head["placement"]
    net.rbee("apply", "--auto-approve")
    workers = _workers(net)
    split, solo = workers["h0.split.0"], workers["h2.gemma3-270m.0"]
    assert split["state"] == solo["state"] == "idle"
    [server] = _rpc_servers(net, net.hosts[1])
    assert server["hive"] == "h1" and server["host"] == net.hosts[1].address
    # The weights the plan lent h1 went there: the kernel counts what the gate received.
    assert _gate_received(net.hosts[1]) >= lent["weights_bytes"]
    assert _greedy(net, split) == _greedy(net, solo)
    assert net.rbee("plan", "--detailed-exitcode", check=False).returncode == 0
    status = net.rbee("status").stdout
    assert f"rpc  server pid {server['pid']}  {net.hosts[1].address}:7836  lends cpu" in status


def test_a_third_host_cannot_reach_the_rpc_server(net: NetworkCluster) -> None:
    """llama.cpp's RPC server has no authentication. From another machine of the LAN (h2):
    h1's gate answers TLS only and ends a handshake without a cluster certificate, before a
    byte reaches llama.cpp; and nothing else of h1 listens: llama.cpp's own port is in a
    namespace of the RPC server's alone."""
    stranger, lender = net.hosts[2], net.hosts[1]
    ca = Path(tempfile.mkdtemp(prefix="rbee-stranger-")) / "ca.pem"
    shutil.copyfile(net.home / ".local/state/rbee/tls/ca.pem", ca)
    ca.parent.chmod(0o755)
    ca.chmod(0o644)
    # RPC_CMD_HELLO (14) with an empty body, as llama.cpp's client opens a connection.
    script = (
        "import socket, ssl, struct, sys\n"
        "host, port = sys.argv[2], 7836\n"
        "with socket.create_connection((host, port), timeout=5) as raw:\n"
        "    raw.sendall(bytes([14]) + struct.pack('<Q', 0))\n"
        "    print('plain', raw.recv(64)[:1].hex() or 'closed')\n"
        "context = ssl.create_default_context(cafile=sys.argv[1])\n"
        "context.check_hostname = False\n"
        "try:\n"
        "    with socket.create_connection((host, port), timeout=5) as raw:\n"
        "        with context.wrap_socket(raw) as tls:\n"
        "            tls.sendall(bytes([14]) + struct.pack('<Q', 0))\n"
        "            print('tls', tls.recv(64).hex() or 'closed')\n"
        "except (ssl.SSLError, OSError) as exc:\n"
        "    print('tls', type(exc).__name__)\n"
    )
    try:
        tried = stranger.run("python3", "-c", script, str(ca), lender.address).stdout.split()
    finally:
        shutil.rmtree(ca.parent, ignore_errors=True)
    # The plain hello gets a TLS alert (0x15) or a close; the TLS one fails its handshake.
    assert tried[:2] == ["plain", "15"] or tried[:2] == ["plain", "closed"], tried
    assert tried[2] == "tls" and tried[3] in ("SSLError", "closed", "ConnectionResetError"), tried
    listening = subprocess.run(
        ["ip", "netns", "exec", lender.namespace, "ss", "-ltnH"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    ports = {int(line.split()[3].rpartition(":")[2]) for line in listening.splitlines()}
    assert ports == {22, 7835, 7836}, listening  # its sshd, the hive and the gate


def test_a_killed_rpc_server_is_healed_with_its_head_worker(net: NetworkCluster) -> None:
    """Killing h1's RPC server takes the layers it held: the head worker on h0 exits at once,
    and self-heal starts the server again, then the worker, which answers as before."""
    before = _workers(net)["h0.split.0"]
    expected = _greedy(net, before)
    [server] = _rpc_servers(net, net.hosts[1])
    net.hosts[1].run("kill", "-KILL", str(server["pid"]))
    killed = time.monotonic()
    while True:
        worker = _workers(net).get("h0.split.0")
        if worker and worker["pid"] != before["pid"] and worker["state"] == "idle":
            break
        assert time.monotonic() - killed < 180, "the split worker was not healed in 180 s"
        time.sleep(1)
    [again] = _rpc_servers(net, net.hosts[1])
    assert again["pid"] != server["pid"]
    assert _greedy(net, worker) == expected
    healed = [e for e in net.get("/v1/history?limit=10")["applies"] if e["kind"] == "self-heal"]
    assert any("rpc_server.h1" in e["done"] for e in healed), healed
