#!/usr/bin/env python3
"""Writes tandem's reference data for Gemma 3 270M (Q4_K_M) from llama.cpp.

`scripts/fetch-model gemma3-270m` fetches the model. Outputs, in tests/reference/gemma3/ (see
tests/reference/README.md):
  tokenizer_cases.jsonl  llama.cpp's ids for the same strings as the default model's cases,
                         plus Gemma-specific ones (turn markers, whitespace runs)
  greedy.json            64 greedy tokens per prompt with llama.cpp's top-2 gap at each
                         position; two prompts are longer than the 512-token sliding window;
                         the header records how far llama.cpp is from itself (flash
                         attention on vs off), teacher-forced over the same positions
  last_logits.json       per prompt, llama.cpp's 64 largest last-prompt-position logits (ids and
                         values) and max |logit| over the vocabulary

`--exact` adds to greedy.json, per prompt, the argmax and top-2 gap of the model computed in
float64 NumPy (weights dequantized by gguf-py, no activation quantization, no f16 KV, the exact
GELU) at the same teacher-forced positions: where tandem and llama.cpp pick different tokens,
it says which of them the exact math picks.

The vocabulary has 262,144 tokens, so full logit rows are not committed (24 MB); the test
compares tandem's logits at llama.cpp's top ids.

Deterministic like gen_reference.py: greedy argmax, n_threads=2, one sequence, the prompt as
one batch, then one token per step.
"""

import argparse
import json
import os
import sys

import numpy as np

import gen_reference as base

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_MODEL = os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf")
N_GENERATE = 64
N_CTX = 2048
TOP_LOGITS = 64

GEMMA_STRINGS = [
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nHi<end_of_turn>",
    "Tabs\tand\t\ttabs\t\t\tand spaces    and\n\n\nnewlines\n\n\n\n",
    "    indented code\n        more indented\n",
    "<h1>Title</h1>\n<p>Paragraph with <b>bold</b> text.</p>",
    "▁literal lower one eighth block ▁▁ and spaces",
    "  leading spaces, trailing spaces  ",
    "ｆｕｌｌｗｉｄｔｈ ｃｈａｒａｃｔｅｒｓ",
    "<unused0> <mask> <pad> <eos> text",
]

PLAIN_PROMPTS = base.PLAIN_PROMPTS + [
    "The history of the printing press begins",
    "Here is a list of the planets in order from the sun:",
]


def long_prompts():
  # Longer than the 512-token sliding window of the local layers, so the window matters.
  story = ("The lighthouse keeper climbed the spiral stairs every evening, counting the steps "
           "as his father had taught him, and every evening the count came out the same. ")
  facts = "".join(f"Fact {i}: the number {i} squared is {i * i}. " for i in range(1, 90))
  return [story * 20 + "One night, the count came out different:",
          facts + "Fact 90:"]


def teacher_forced(llm, prompt_tokens, tokens):
  """Argmax and top-2 gap at each of len(tokens) positions, fed the given tokens."""
  llm.reset()
  llm.eval(prompt_tokens)
  argmax, gaps = [], []
  for t in tokens:
    logits = base.last_logits(llm)
    order = np.argsort(-logits, kind="stable")
    argmax.append(int(order[0]))
    gaps.append(float(logits[order[0]] - logits[order[1]]))
    llm.eval([t])
  return argmax, gaps


class ExactGemma3:
  """Gemma 3 in float64, written from its definition (as tests/support/reference_model.cc)."""

  def __init__(self, path):
    import gguf
    from gguf import quants
    r = gguf.GGUFReader(path)

    def field(name, default=None):
      if name not in r.fields:
        return default
      f = r.fields[name]
      return f.parts[f.data[0]][0]

    a = "gemma3."
    self.n_layers = int(field(a + "block_count"))
    self.hidden = int(field(a + "embedding_length"))
    self.n_heads = int(field(a + "attention.head_count"))
    self.n_kv = int(field(a + "attention.head_count_kv"))
    self.head_dim = int(field(a + "attention.key_length"))
    self.eps = float(field(a + "attention.layer_norm_rms_epsilon"))
    self.theta = float(field(a + "rope.freq_base"))
    self.theta_swa = float(field(a + "rope.freq_base_swa", 10000.0))
    self.window = int(field(a + "attention.sliding_window"))
    self.is_swa = [il % 6 < 5 for il in range(self.n_layers)]
    tensors = {t.name: t for t in r.tensors}

    def w(name):
      t = tensors[name]
      return quants.dequantize(t.data, t.tensor_type).astype(np.float64)

    self.embd = w("token_embd.weight")
    self.out_norm = w("output_norm.weight")
    self.layers = []
    for i in range(self.n_layers):
      p = f"blk.{i}."
      self.layers.append({k: w(p + k + ".weight") for k in (
          "attn_norm", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "attn_output",
          "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm")})

  def rms(self, x, weight):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

  def rope(self, x, theta):
    # NeoX: pairs (i, i + d/2) turn by position * theta^(-2i/d).
    t, d = x.shape[0], self.head_dim
    half = d // 2
    ang = np.arange(t, dtype=np.float64)[:, None] * theta ** (-np.arange(half) * 2.0 / d)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., :half], x[..., half:]
    return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)

  def logits_at(self, tokens, rows):
    """One causal pass over `tokens` from position 0; the logits of positions `rows`."""
    t = len(tokens)
    x = self.embd[np.asarray(tokens)] * np.sqrt(self.hidden)
    pos = np.arange(t)
    group = self.n_heads // self.n_kv
    for li, L in enumerate(self.layers):
      h = self.rms(x, L["attn_norm"])
      q = self.rms((h @ L["attn_q"].T).reshape(t, self.n_heads, self.head_dim), L["attn_q_norm"])
      k = self.rms((h @ L["attn_k"].T).reshape(t, self.n_kv, self.head_dim), L["attn_k_norm"])
      v = (h @ L["attn_v"].T).reshape(t, self.n_kv, self.head_dim)
      theta = self.theta_swa if self.is_swa[li] else self.theta
      q, k = self.rope(q, theta), self.rope(k, theta)
      mask = pos[None, :] > pos[:, None]
      if self.is_swa[li]:
        mask |= pos[:, None] - pos[None, :] >= self.window
      out = np.empty((t, self.n_heads, self.head_dim))
      for hh in range(self.n_heads):
        kv = hh // group
        scores = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(self.head_dim)
        scores[mask] = -np.inf
        scores -= scores.max(axis=1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=1, keepdims=True)
        out[:, hh, :] = p @ v[:, kv, :]
      x = x + self.rms(out.reshape(t, -1) @ L["attn_output"].T, L["post_attention_norm"])
      h = self.rms(x, L["ffn_norm"])
      g = h @ L["ffn_gate"].T
      gelu = 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3)))
      x = x + self.rms((gelu * (h @ L["ffn_up"].T)) @ L["ffn_down"].T, L["post_ffw_norm"])
    return self.rms(x[rows], self.out_norm) @ self.embd.T


def add_exact(model_path, out_dir):
  """Adds exact_argmax / exact_gap (float64, teacher-forced) to each prompt of greedy.json."""
  path = os.path.join(out_dir, "greedy.json")
  with open(path, encoding="utf-8") as f:
    ref = json.load(f)
  m = ExactGemma3(model_path)
  for i, p in enumerate(ref["prompts"]):
    seq = p["prompt_tokens"] + p["tokens"][:-1]
    first = len(p["prompt_tokens"]) - 1
    logits = m.logits_at(seq, np.arange(first, first + len(p["tokens"])))
    order = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    p["exact_argmax"] = [int(o[0]) for o in order]
    p["exact_gap"] = [float(l[o[0]] - l[o[1]]) for l, o in zip(logits, order)]
    agree = sum(a == t for a, t in zip(p["exact_argmax"], p["tokens"]))
    print(f"exact: prompt {i}: {agree} of {len(p['tokens'])} positions agree with llama.cpp",
          file=sys.stderr)
  ref["header"]["exact"] = ("exact_argmax / exact_gap: the float64 model (gguf-py weights, "
                            "exact GELU, f64 KV) teacher-forced on the same tokens")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(ref, f, ensure_ascii=False, indent=1)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default=DEFAULT_MODEL)
  ap.add_argument("--out", default=os.path.join(HERE, "gemma3"))
  ap.add_argument("--tokenizer-only", action="store_true")
  ap.add_argument("--exact", action="store_true",
                  help="only add the float64 model's choices to an existing greedy.json")
  args = ap.parse_args()
  os.makedirs(args.out, exist_ok=True)
  if args.exact:
    add_exact(args.model, args.out)
    return
  import llama_cpp

  header = {
      "generator": "tests/reference/gen_gemma3_reference.py",
      "llama_cpp_python_version": llama_cpp.__version__,
      "llama_cpp_commit": base.LLAMA_CPP_COMMIT,
      "cmake_args": base.CMAKE_ARGS,
      "system_info": llama_cpp.llama_print_system_info().decode().strip(),
      "model": os.path.basename(args.model),
      "model_sha256": base.sha256_of(args.model),
      "n_threads": base.N_THREADS,
  }
  params = dict(model_path=args.model, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=512,
                n_threads=base.N_THREADS, n_threads_batch=base.N_THREADS, logits_all=False,
                verbose=False, seed=0)
  llm = llama_cpp.Llama(flash_attn=False, **params)

  # 1. Tokenizer cases: add_bos=False, like the default model's.
  cases = base.tokenizer_strings() + [(s, True) for s in GEMMA_STRINGS] + \
      [(s, False) for s in GEMMA_STRINGS[:2]]
  with open(os.path.join(args.out, "tokenizer_cases.jsonl"), "w", encoding="utf-8") as f:
    f.write(json.dumps({"header": header, "count": len(cases) + len(base.INVALID_UTF8)},
                       ensure_ascii=False) + "\n")
    for text, special in cases:
      raw = text.encode("utf-8")
      ids = llm.tokenize(raw, add_bos=False, special=special)
      rec = {"text": text, "special": special, "ids": ids}
      decoded = b"".join(base.token_piece(llm, t) for t in ids)
      if decoded != raw:
        rec["decoded_hex"] = decoded.hex()
      f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    for raw in base.INVALID_UTF8:
      ids = llm.tokenize(raw, add_bos=False, special=True)
      rec = {"hex": raw.hex(), "special": True, "ids": ids,
             "decoded_hex": b"".join(base.token_piece(llm, t) for t in ids).hex()}
      f.write(json.dumps(rec) + "\n")
  print(f"tokenizer_cases.jsonl: {len(cases) + len(base.INVALID_UTF8)} cases", file=sys.stderr)
  if args.tokenizer_only:
    return

  # 2. Greedy generations (BOS added: the model's add_bos_token is true) and top logits.
  prompts = [{"kind": "plain", "prompt": p} for p in PLAIN_PROMPTS]
  prompts += [{"kind": "long", "prompt": p} for p in long_prompts()]
  records, tops = [], []
  for p in prompts:
    prompt_tokens = llm.tokenize(p["prompt"].encode("utf-8"), add_bos=True, special=True)
    llm.reset()
    llm.eval(prompt_tokens)
    logits = base.last_logits(llm)
    order = np.argsort(-logits, kind="stable")[:TOP_LOGITS]
    tops.append({"ids": [int(i) for i in order], "values": [float(logits[i]) for i in order],
                 "max_abs": float(np.max(np.abs(logits)))})
    tokens, gaps = [], []
    for _ in range(N_GENERATE):
      order = np.argsort(-logits, kind="stable")
      tokens.append(int(order[0]))
      gaps.append(float(logits[order[0]] - logits[order[1]]))
      llm.eval([tokens[-1]])
      logits = base.last_logits(llm)
    rec = dict(p, prompt_tokens=prompt_tokens, tokens=tokens, top2_gap=gaps)
    rec["text"] = b"".join(base.token_piece(llm, t) for t in tokens).decode("utf-8",
                                                                             errors="replace")
    records.append(rec)
    print(f"greedy: {len(prompt_tokens)} prompt tokens, min gap {min(gaps):.4f}",
          file=sys.stderr)

  # 3. llama.cpp against itself: flash attention on, teacher-forced on the same tokens, and its
  #    last-prompt logits at the same top ids.
  del llm
  fa = llama_cpp.Llama(flash_attn=True, **params)
  mismatches, positions, worst_gap, logit_errs = 0, 0, 0.0, []
  for rec, top in zip(records, tops):
    fa.reset()
    fa.eval(rec["prompt_tokens"])
    logits = base.last_logits(fa)
    logit_errs.append(max(abs(float(logits[i]) - v) for i, v in zip(top["ids"], top["values"])) /
                      top["max_abs"])
    argmax, _ = teacher_forced(fa, rec["prompt_tokens"], rec["tokens"])
    for a, t, g in zip(argmax, rec["tokens"], rec["top2_gap"]):
      positions += 1
      if a != t:
        mismatches += 1
        worst_gap = max(worst_gap, g)
  spread = {"what": "llama.cpp with flash attention on vs off (the reference), teacher-forced",
            "positions": positions, "mismatches": mismatches,
            "largest_gap_at_mismatch": worst_gap,
            "top_logit_err_worst": max(logit_errs),
            "top_logit_err_mean": sum(logit_errs) / len(logit_errs)}
  print(f"self-spread: {spread}", file=sys.stderr)

  with open(os.path.join(args.out, "greedy.json"), "w", encoding="utf-8") as f:
    json.dump({"header": dict(header, n_generate=N_GENERATE, self_spread=spread,
                              note="BOS added; greedy argmax, no penalties, EOS not "
                                   "special-cased; prompt evaluated as one batch, then one "
                                   "token per step"),
               "prompts": records}, f, ensure_ascii=False, indent=1)
  with open(os.path.join(args.out, "last_logits.json"), "w", encoding="utf-8") as f:
    json.dump({"header": dict(header, top=TOP_LOGITS,
                              note="per prompt in greedy.json order: llama.cpp's largest "
                                   "last-prompt-position logits and max |logit|"),
               "prompts": tops}, f, indent=1)
  print("done", file=sys.stderr)


if __name__ == "__main__":
  main()
