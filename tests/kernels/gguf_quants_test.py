"""tandem's GGUF tensor formats against gguf-py, llama.cpp's own Python package.

tandem-make-test-model writes a tiny synthetic model whose linear weights and embeddings are
of one type, and (--dump_values) each tensor's source floats and what kernels::DequantizeRow
decodes from the stored bytes. For every tensor of every type tandem supports:
  - gguf.quants.dequantize of the stored bytes equals tandem's decoding bit for bit;
  - gguf.quants.quantize of the source floats gives the stored bytes exactly: tandem's
    QuantizeRow follows ggml's reference quantizers, which gguf-py ports to NumPy in float32.
    The K-quants (q2_k .. q6_k) are checked for dequantize only: gguf-py has no K-quant
    quantizer (and tandem's own K quantizer is simpler than ggml's search, so their bytes
    would differ anyway); their models use hidden 256 and ffn 512, multiples of the
    256-element super-block.
Run by ctest through tests/kernels/gguf_quants_test in the project's Python environment
(scripts/python-env); TANDEM_MAKE_TEST_MODEL names the generator binary.
"""
import os
import subprocess

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, quants

GENERATOR = os.environ.get("TANDEM_MAKE_TEST_MODEL", "")

K_TYPES = ["q4_k", "q6_k", "q5_k", "q3_k", "q2_k"]
TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "f16", "bf16", "f32"] + K_TYPES


def make_model(tmp_path, type_name, seed):
    # ctest sets it (tests/CMakeLists.txt); run by hand, say which generator to use.
    assert GENERATOR, "set TANDEM_MAKE_TEST_MODEL to build/bin/tandem-make-test-model"
    model = tmp_path / f"{type_name}_{seed}.gguf"
    dump = tmp_path / f"{type_name}_{seed}.f32"
    sizes = ["--hidden", "256", "--ffn", "512"] if type_name in K_TYPES else []
    subprocess.run([GENERATOR, "--out", str(model), "--dump_values", str(dump),
                    "--type", type_name, "--embd_type", type_name, "--untied",
                    "--seed", str(seed)] + sizes, check=True, capture_output=True)
    return GGUFReader(str(model)), np.fromfile(dump, dtype="<f4")


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("type_name", TYPES)
def test_matches_gguf_py(tmp_path, type_name, seed):
    reader, dump = make_model(tmp_path, type_name, seed)
    want_type = GGMLQuantizationType[type_name.upper()]
    offset = 0
    checked = 0
    for t in reader.tensors:
        n = int(t.n_elements)
        source = dump[offset:offset + n]
        decoded = dump[offset + n:offset + 2 * n]
        offset += 2 * n
        if len(t.shape) == 1:  # norm vectors are always F32
            assert t.tensor_type == GGMLQuantizationType.F32, t.name
            continue
        assert t.tensor_type == want_type, t.name
        checked += 1
        theirs = quants.dequantize(t.data, t.tensor_type).reshape(-1).astype(np.float32)
        assert theirs.shape == decoded.shape, t.name
        bad = np.flatnonzero(theirs.view(np.uint32) != decoded.view(np.uint32))
        assert bad.size == 0, (
            f"{t.name}: {bad.size} of {n} values differ from gguf-py's dequantize, "
            f"first at {bad[0]}: tandem {decoded[bad[0]]}, gguf-py {theirs[bad[0]]}")
        if type_name in K_TYPES:
            continue  # no K-quant quantizer in gguf-py
        stored = np.asarray(t.data).reshape(-1).view(np.uint8)
        ne0 = int(t.shape[0])
        requant = quants.quantize(source.reshape(-1, ne0), t.tensor_type)
        requant = requant.reshape(-1).view(np.uint8)
        assert requant.shape == stored.shape, t.name
        diff = np.flatnonzero(requant != stored)
        assert diff.size == 0, (
            f"{t.name}: {diff.size} of {stored.size} bytes differ from gguf-py's quantize, "
            f"first at byte {diff[0]}")
    assert offset == dump.size
    # The 7 linear weights of each of the 2 layers, the embedding and the untied output.
    assert checked == 2 * 7 + 2
