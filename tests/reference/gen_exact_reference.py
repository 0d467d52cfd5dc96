#!/usr/bin/env python3
"""An exact-arithmetic reference for the default model's forward pass.

llama.cpp's CPU path quantizes activations before its quantized dot products (to Q8_1 for
Q4_1 weights, Q8_0 for Q8_0 weights), so its logits carry rounding that an engine with
float activations does not share. This script runs the same model in float64 with NumPy,
on weights dequantized by gguf-py, for the prompts of greedy.json, and writes:

  exact_last_logits.bin   little-endian float32 [count][n_vocab]: last prompt position
  exact_greedy.json       header, the distance of llama.cpp's logits from these, and per
                          prompt 64 greedy tokens with top-2 gaps (same schema as greedy.json)

The model is the Llama architecture as GGUF stores it: RMSNorm, rotary embedding on
adjacent pairs (GGUF's "normal" rope layout), grouped-query causal attention, SwiGLU,
tied output embedding. Greedy decoding uses a KV cache; ties go to the lower id.
"""

import argparse
import hashlib
import json
import os
import sys

import gguf
import numpy as np
from gguf import quants

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


class Model:

  def __init__(self, path):
    r = gguf.GGUFReader(path)

    def field(name):
      f = r.fields[name]
      return f.parts[f.data[0]][0]

    self.n_layers = int(field("llama.block_count"))
    self.hidden = int(field("llama.embedding_length"))
    self.n_heads = int(field("llama.attention.head_count"))
    self.n_kv = int(field("llama.attention.head_count_kv"))
    self.eps = float(field("llama.attention.layer_norm_rms_epsilon"))
    self.theta = float(field("llama.rope.freq_base"))
    self.head_dim = self.hidden // self.n_heads
    tensors = {t.name: t for t in r.tensors}

    def w(name):
      t = tensors[name]
      return quants.dequantize(t.data, t.tensor_type).astype(np.float64)

    self.embd = w("token_embd.weight")  # [vocab, hidden]
    self.out_norm = w("output_norm.weight")
    self.output = w("output.weight") if "output.weight" in tensors else self.embd
    self.layers = []
    for i in range(self.n_layers):
      p = f"blk.{i}."
      self.layers.append({k: w(p + k + ".weight") for k in (
          "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
          "ffn_up", "ffn_down")})
    half = self.head_dim // 2
    self.inv_freq = self.theta ** (-np.arange(half, dtype=np.float64) * 2.0 / self.head_dim)

  def rms(self, x, weight):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

  def rope(self, x, positions):
    # x: [T, heads, head_dim]; rotate pairs (2i, 2i+1) by positions * inv_freq[i].
    ang = positions[:, None] * self.inv_freq[None, :]  # [T, half]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out

  def forward(self, tokens, cache):
    """Runs `tokens` after the cache's contents; returns the last position's logits."""
    start = cache["n"]
    t = len(tokens)
    positions = np.arange(start, start + t, dtype=np.float64)
    x = self.embd[np.asarray(tokens)]
    group = self.n_heads // self.n_kv
    for li, L in enumerate(self.layers):
      h = self.rms(x, L["attn_norm"])
      q = (h @ L["attn_q"].T).reshape(t, self.n_heads, self.head_dim)
      k = (h @ L["attn_k"].T).reshape(t, self.n_kv, self.head_dim)
      v = (h @ L["attn_v"].T).reshape(t, self.n_kv, self.head_dim)
      q, k = self.rope(q, positions), self.rope(k, positions)
      cache["k"][li] = k if start == 0 else np.concatenate([cache["k"][li], k])
      cache["v"][li] = v if start == 0 else np.concatenate([cache["v"][li], v])
      K, V = cache["k"][li], cache["v"][li]  # [S, kv, d]
      s_len = K.shape[0]
      out = np.empty((t, self.n_heads, self.head_dim))
      mask = np.arange(s_len)[None, :] > (start + np.arange(t))[:, None]  # [t, S]
      for hh in range(self.n_heads):
        kv = hh // group
        scores = q[:, hh, :] @ K[:, kv, :].T / np.sqrt(self.head_dim)
        scores[mask] = -np.inf
        scores -= scores.max(axis=1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=1, keepdims=True)
        out[:, hh, :] = p @ V[:, kv, :]
      x = x + out.reshape(t, self.hidden) @ L["attn_output"].T
      h = self.rms(x, L["ffn_norm"])
      gate = h @ L["ffn_gate"].T
      up = h @ L["ffn_up"].T
      x = x + (gate / (1.0 + np.exp(-gate)) * up) @ L["ffn_down"].T
    cache["n"] = start + t
    last = self.rms(x[-1], self.out_norm)
    return self.output @ last


def check_with_llama_cpp(model_path, prompts, exact_logits, n_check):
  """Cross-checks this implementation against llama.cpp with activation quantization out of
  the way: the model is rewritten with every tensor dequantized to F32 (llama.cpp then
  multiplies in float32) and the first `n_check` prompts are evaluated. What remains is
  float32 vs float64 and llama.cpp's float16 KV cache. Returns the per-prompt distances."""
  import tempfile
  import llama_cpp
  r = gguf.GGUFReader(model_path)
  tmp = tempfile.NamedTemporaryFile(suffix=".gguf", delete=False)
  tmp.close()
  try:
    w = gguf.GGUFWriter(tmp.name, r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
      if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
        continue
      if f.types[0] == gguf.GGUFValueType.ARRAY:
        w.add_key_value(name, f.contents(), f.types[0], sub_type=f.types[-1])
      else:
        w.add_key_value(name, f.contents(), f.types[0])
    w.add_file_type(0)
    for t in r.tensors:
      w.add_tensor(t.name, quants.dequantize(t.data, t.tensor_type).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    llm = llama_cpp.Llama(tmp.name, n_ctx=512, n_batch=512, n_threads=2, verbose=False)
    out = []
    for i, p in enumerate(prompts[:n_check]):
      llm.reset()
      llm.eval(p["prompt_tokens"])
      got = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1),
                                  shape=(exact_logits[i].size,)).astype(np.float64)
      out.append(float(np.abs(got - exact_logits[i]).max() / np.abs(exact_logits[i]).max()))
    return out
  finally:
    os.unlink(tmp.name)


def new_cache(model):
  return {"n": 0, "k": [None] * model.n_layers, "v": [None] * model.n_layers}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default=DEFAULT_MODEL)
  ap.add_argument("--out", default=HERE)
  ap.add_argument("--n-generate", type=int, default=64)
  ap.add_argument("--check-prompts", type=int, default=8,
                  help="prompts to cross-check against llama.cpp on F32 weights (0: skip)")
  args = ap.parse_args()

  with open(os.path.join(HERE, "greedy.json"), encoding="utf-8") as f:
    ref = json.load(f)
  llama_logits = np.fromfile(os.path.join(HERE, "last_logits.bin"), dtype="<f4")
  model = Model(args.model)
  n_vocab = model.output.shape[0]
  llama_logits = llama_logits.reshape(-1, n_vocab)
  h = hashlib.sha256()
  with open(args.model, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)

  records, all_logits, rel, exact64 = [], [], [], []
  for i, p in enumerate(ref["prompts"]):
    cache = new_cache(model)
    logits = model.forward(p["prompt_tokens"], cache)
    all_logits.append(logits.astype(np.float32))
    exact64.append(logits)
    d = np.abs(logits - llama_logits[i]).max() / np.abs(logits).max()
    rel.append(float(d))
    tokens, gaps = [], []
    for _ in range(args.n_generate):
      order = np.argsort(-logits, kind="stable")
      tokens.append(int(order[0]))
      gaps.append(float(logits[order[0]] - logits[order[1]]))
      logits = model.forward([int(order[0])], cache)
    want = p["tokens"]
    first = next((j for j in range(len(want)) if j >= len(tokens) or tokens[j] != want[j]),
                 None)
    records.append({"prompt": p["prompt"], "prompt_tokens": p["prompt_tokens"],
                    "tokens": tokens, "top2_gap": gaps,
                    "llama_cpp_rel_max_diff": rel[-1],
                    "first_divergence_from_llama_cpp": first})
    print(f"prompt {i}: llama.cpp max|diff|/max|logit| {d:.2e}, first divergence {first}",
          file=sys.stderr)

  check = []
  if args.check_prompts > 0:
    check = check_with_llama_cpp(args.model, ref["prompts"], exact64, args.check_prompts)
    print(f"llama.cpp on F32 weights vs float64: worst {max(check):.2e}", file=sys.stderr)

  header = {
      "generator": "tests/reference/gen_exact_reference.py",
      "arithmetic": "float64 (NumPy), weights dequantized by gguf-py " + gguf.__name__,
      "model": os.path.basename(args.model),
      "model_sha256": h.hexdigest(),
      "n_vocab": n_vocab,
      "count": len(records),
      "n_generate": args.n_generate,
      # Distance (max |diff| / max |logit| at the last prompt position) of greedy.json's
      # llama.cpp logits (Q4_1/Q8_0 weights, activations quantized to Q8) from these.
      "llama_cpp_rel_max_diff": {"worst": max(rel), "mean": sum(rel) / len(rel)},
      # The same distance for llama.cpp run on the model dequantized to F32 (first prompts):
      # validates this implementation; the remainder is float32 math and its f16 KV cache.
      "llama_cpp_f32_weights_rel_max_diff": check,
      "layout": "exact_last_logits.bin: little-endian float32 [count][n_vocab], prompts in "
                "greedy.json order",
  }
  with open(os.path.join(args.out, "exact_last_logits.bin"), "wb") as f:
    for logits in all_logits:
      f.write(logits.astype("<f4").tobytes())
  with open(os.path.join(args.out, "exact_greedy.json"), "w", encoding="utf-8") as f:
    json.dump({"header": header, "prompts": records}, f, ensure_ascii=False, indent=1)
  print(f"llama.cpp vs float64: worst {max(rel):.2e}, mean {sum(rel) / len(rel):.2e}",
        file=sys.stderr)


if __name__ == "__main__":
  main()
