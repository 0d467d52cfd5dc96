"""Fixtures for tandemd's end-to-end tests: a real daemon on the default model.

Environment (set by CTest, see tests/e2e/CMakeLists.txt):
  TANDEMD       path of the tandemd binary
  TANDEM_MODEL  path of the default GGUF model
  TANDEM_SOURCE_DIR  repository root (for proto/)
"""
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

TANDEMD = os.environ.get("TANDEMD", "build/bin/tandemd")
MODEL = os.environ.get("TANDEM_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf")
SOURCE_DIR = os.environ.get("TANDEM_SOURCE_DIR", os.getcwd())
MODEL_NAME = "smollm2"


_ports_given = set()


def free_port():
    """A port nothing listens on, for a daemon to bind later. Taken below the kernel's
    ephemeral range where it can: a port that bind(0) returned and released may be handed to
    the next bind(0) anywhere, and CI saw a decode worker's KV listener (port 0) take the HTTP
    port its test had picked that way a moment before."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    if low > 11000:
        for _ in range(500):
            port = random.randrange(10000, low)
            if port in _ports_given:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _ports_given.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url):
    """GET url/metrics as {name{labels}: value}."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


class Daemon:
    """One tandemd process on free ports; stopped with SIGTERM. Start-up waits until
    `wait_path` answers 200 (a router that has no workers yet is healthy, not ready).

    Unless `slo` is true, the daemon has no default SLOs (--ttft-slo-ms 0 --tpot-slo-ms 0) and
    no latency model (--profile-latency=false), so requests that name none are best-effort:
    SLO admission, which depends on how fast the machine is at that moment, never refuses the
    functional tests' requests, and start-up skips the profile. The SLO tests pass slo=True
    and their own flags.
    """

    def __init__(self, *extra, startup_timeout=120, slo=False, wait_path="/ready"):
        if not slo:
            # Best-effort requests need no latency model: skip the start-up profile too.
            extra = ("--ttft-slo-ms", "0", "--tpot-slo-ms", "0", "--profile-latency=false",
                     *extra)
        self.port = free_port()
        self.grpc_port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="tandemd-", suffix=".log", delete=False)
        args = [TANDEMD, "--model", MODEL, "--served-model-name", MODEL_NAME,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--grpc-port", str(self.grpc_port), "--threads", "2", *extra]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tandemd exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + wait_path, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"tandemd not ready after {startup_timeout} s:\n{self.logs()}")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self):
        return f"127.0.0.1:{self.grpc_port}"

    def logs(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def metrics(self):
        """GET /metrics as {name{labels}: value}."""
        return scrape(self.url)

    def terminate(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop_cleanly(self):
        """Stops the daemon (SIGTERM) and asserts that it exited with 0 and that its log holds
        no sanitizer report (sanitizer builds print them there)."""
        code = self.terminate()
        assert code == 0, f"tandemd exited with {code}:\n{self.logs()}"
        logs = self.logs()
        assert "ERROR: AddressSanitizer" not in logs and "runtime error:" not in logs, logs


@pytest.fixture(scope="session")
def daemon():
    d = Daemon("--max-num-seqs", "64", "--max-queue", "512")
    yield d
    d.stop_cleanly()


@pytest.fixture(scope="session")
def client(daemon):
    import openai
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0,
                         timeout=300)


@pytest.fixture(scope="session")
def grpc_stubs(tmp_path_factory):
    """Python modules generated from proto/tandem/v1 with grpcio-tools."""
    from grpc_tools import protoc
    out = tmp_path_factory.mktemp("stubs")
    proto_dir = os.path.join(SOURCE_DIR, "proto")
    protos = []
    for root, _, files in os.walk(os.path.join(proto_dir, "tandem")):
        protos += [os.path.join(root, f) for f in files if f.endswith(".proto")]
    assert protos, "no .proto files under proto/tandem"
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}",
                      f"--grpc_python_out={out}", *protos])
    assert rc == 0
    sys.path.insert(0, str(out))
    import importlib
    pb2 = importlib.import_module("tandem.v1.generation_pb2")
    pb2_grpc = importlib.import_module("tandem.v1.generation_pb2_grpc")
    return pb2, pb2_grpc
