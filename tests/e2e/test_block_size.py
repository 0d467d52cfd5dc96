"""tandemd --block-size: the KV cache's tokens per block. The attention kernels walk a context in
16-position tiles that never cross a block, at the same positions for any block size that is a
multiple of 16, so a daemon with 64-token blocks gives the default daemon's (16) text, greedy and
seeded, on prompts and generations that run past several blocks of either size. A size out of
1..256 is refused at start with one line."""
import json
import subprocess
import urllib.request

import pytest

from conftest import MODEL, MODEL_NAME, TANDEMD, Daemon

PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when",
    "Here is a list of ten animals that live in the ocean, with one sentence about each:\n1.",
]


@pytest.fixture(scope="module")
def large_blocks():
    d = Daemon("--block-size", "64", "--max-num-seqs", "16")
    yield d
    d.stop_cleanly()


def complete(url, prompt, **extra):
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 96, **extra}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("extra", [{"temperature": 0},
                                   {"temperature": 0.8, "top_p": 0.95, "seed": 4321}],
                         ids=["greedy", "seeded"])
def test_64_token_blocks_give_the_default_daemons_text(daemon, large_blocks, extra):
    for prompt in PROMPTS:
        want = complete(daemon.url, prompt, **extra)
        got = complete(large_blocks.url, prompt, **extra)
        # Past the first 64-token block of the larger size: prompt and output together.
        used = got["usage"]["prompt_tokens"] + got["usage"]["completion_tokens"]
        assert used > 64 + 16, got["usage"]
        assert got["choices"][0]["text"] == want["choices"][0]["text"], (prompt, extra)


def test_the_log_names_the_block_size(large_blocks):
    assert "blocks of 64)" in large_blocks.logs(), large_blocks.logs()


@pytest.mark.parametrize("size", ["0", "257"])
def test_a_block_size_out_of_range_is_one_line(size):
    r = subprocess.run([TANDEMD, "--model", MODEL, "--port", "0", "--block-size", size],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--block-size" in lines[0] and size in lines[0], r.stderr
