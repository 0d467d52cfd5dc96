"""The `tandem` CLI (C++ client library) against the live daemon, over HTTP and over gRPC."""
import os
import subprocess

from conftest import MODEL_NAME

CLI = os.environ.get("TANDEM_CLI", "build/bin/tandem")


def cli(*args, stdin=None):
    return subprocess.run([CLI, *args], input=stdin, capture_output=True, text=True,
                          timeout=300)


def test_complete_over_http_and_grpc_match_the_sdk(daemon, client):
    want = client.completions.create(model=MODEL_NAME, prompt="The moon is", max_tokens=10,
                                     temperature=0).choices[0].text
    for transport in (["--url", daemon.url], ["--grpc", daemon.grpc_target]):
        r = cli(*transport, "--model", MODEL_NAME, "complete", "--prompt", "The moon is",
                "--max-tokens", "10", "--temperature", "0")
        assert r.returncode == 0, r.stderr
        assert r.stdout.rstrip("\n") == want.rstrip("\n"), (transport, r.stdout, want)


def test_health_and_models(daemon):
    for transport in (["--url", daemon.url], ["--grpc", daemon.grpc_target]):
        r = cli(*transport, "health")
        assert r.returncode == 0, r.stderr
        r = cli(*transport, "models")
        assert r.returncode == 0 and MODEL_NAME in r.stdout, (r.stdout, r.stderr)


def test_chat_session(daemon):
    r = cli("--url", daemon.url, "--model", MODEL_NAME, "chat", "--max-tokens", "8",
            "--temperature", "0", stdin="Hello!\nAnd again?\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_server_errors_exit_1(daemon):
    r = cli("--url", daemon.url, "--model", "no-such-model", "complete", "--prompt", "x")
    assert r.returncode == 1
    assert "no-such-model" in r.stderr
    r = cli("--grpc", daemon.grpc_target, "--model", "no-such-model", "complete", "--prompt",
            "x")
    assert r.returncode == 1
