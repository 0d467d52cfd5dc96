#!/usr/bin/env python3
"""Reference data for tandem's SentencePiece-style ("llama") tokenizer.

No SentencePiece GGUF ships with the project, so this script makes a small vocabulary-only
one, tiny_spm.gguf, and asks llama.cpp (through llama-cpp-python) to tokenize and
detokenize the same strings as gen_reference.py with it, writing spm_cases.jsonl.

The vocabulary is grown from the test strings themselves so that merges actually happen:
every character of the (U+2581-escaped) corpus except CJK, Devanagari and emoji (left out so
that byte fallback is exercised), plus the most frequent substrings of 2..6 characters, with
scores quantised to a few levels so that equal-score ties (broken leftmost first) are common.
Specials: <unk> (unknown), <s> and </s> (control), <|user|> (user-defined), and the 256
<0xXX> byte tokens. Deterministic: a fixed corpus and a seeded RNG.
"""

import argparse
import collections
import ctypes
import hashlib
import json
import os
import random
import sys

import gguf
import llama_cpp

import gen_reference

HERE = os.path.dirname(os.path.abspath(__file__))
SP = "\u2581"


def excluded(ch):
  cp = ord(ch)
  return (0x4E00 <= cp <= 0x9FFF or 0x3040 <= cp <= 0x30FF or 0xAC00 <= cp <= 0xD7AF
          or 0x0900 <= cp <= 0x097F or cp >= 0x1F000)


def build_vocab(strings):
  rng = random.Random(4242)
  corpus = [SP + s.replace(" ", SP) for s in strings]
  chars = sorted({c for s in corpus for c in s if not excluded(c) and c not in "\x00"})
  counts = collections.Counter()
  for s in corpus:
    for n in range(2, 7):
      for i in range(len(s) - n + 1):
        sub = s[i:i + n]
        if not any(excluded(c) for c in sub) and "\x00" not in sub:
          counts[sub] += 1
  frequent = [sub for sub, c in counts.most_common() if c >= 2][:3000]
  tokens, scores, types = [], [], []

  def add(text, score, ttype):
    tokens.append(text)
    scores.append(float(score))
    types.append(ttype)

  add("<unk>", 0.0, gguf.TokenType.UNKNOWN)
  add("<s>", 0.0, gguf.TokenType.CONTROL)
  add("</s>", 0.0, gguf.TokenType.CONTROL)
  for b in range(256):
    add(f"<0x{b:02X}>", 0.0, gguf.TokenType.BYTE)
  add("<|user|>", 0.0, gguf.TokenType.USER_DEFINED)
  seen = set(tokens)
  for c in chars:
    if c not in seen:
      seen.add(c)
      add(c, -100.0, gguf.TokenType.NORMAL)
  for sub in frequent:
    if sub not in seen:
      seen.add(sub)
      # Few distinct levels: many equal scores, so tie-breaking matters.
      add(sub, -float(rng.randint(1, 8)), gguf.TokenType.NORMAL)
  return tokens, scores, types


def write_gguf(path, tokens, scores, types):
  w = gguf.GGUFWriter(path, "llama")
  w.add_name("tandem tiny SentencePiece-style vocabulary (tokenizer tests only)")
  w.add_context_length(256)
  w.add_embedding_length(64)
  w.add_block_count(1)
  w.add_feed_forward_length(128)
  w.add_head_count(2)
  w.add_head_count_kv(2)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_tokenizer_model("llama")
  w.add_token_list(tokens)
  w.add_token_scores(scores)
  w.add_token_types(types)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_unk_token_id(0)
  w.add_add_bos_token(True)
  w.add_add_eos_token(False)
  w.add_add_space_prefix(True)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def detokenize(vocab, ids):
  arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
  size = 64 + 16 * len(ids)
  while True:
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, True)
    if n >= 0:
      return buf.raw[:n]
    size = -n


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=HERE)
  args = ap.parse_args()

  cases = gen_reference.tokenizer_strings()
  extra = [("<|user|>hello<s>world</s>", True), ("<|user|> x", False), ("<unk>", True),
           ("a<s>b", True), ("  two leading spaces", True), ("", True)]
  cases += extra
  tokens, scores, types = build_vocab([t for t, _ in cases])
  gguf_path = os.path.join(args.out, "tiny_spm.gguf")
  write_gguf(gguf_path, tokens, scores, types)
  with open(gguf_path, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()

  llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)
  vocab = llama_cpp.llama_model_get_vocab(llm.model)
  header = {
      "generator": "tests/reference/gen_spm_reference.py",
      "llama_cpp_python_version": llama_cpp.__version__,
      "llama_cpp_commit": gen_reference.LLAMA_CPP_COMMIT,
      "model": "tiny_spm.gguf",
      "model_sha256": sha,
      "n_vocab": len(tokens),
  }
  with open(os.path.join(args.out, "spm_cases.jsonl"), "w", encoding="utf-8") as f:
    f.write(json.dumps({"header": header,
                        "count": len(cases) + len(gen_reference.INVALID_UTF8)},
                       ensure_ascii=False) + "\n")
    for text, special in cases:
      raw = text.encode("utf-8")
      ids = llm.tokenize(raw, add_bos=False, special=special)
      rec = {"text": text, "special": special, "ids": ids,
             "decoded_hex": detokenize(vocab, ids).hex()}
      f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    # Malformed UTF-8: SentencePiece-style tokenization takes the bytes as they are.
    for raw in gen_reference.INVALID_UTF8:
      ids = llm.tokenize(raw, add_bos=False, special=True)
      rec = {"hex": raw.hex(), "special": True, "ids": ids,
             "decoded_hex": detokenize(vocab, ids).hex()}
      f.write(json.dumps(rec) + "\n")
  n = len(cases) + len(gen_reference.INVALID_UTF8)
  print(f"spm_cases.jsonl: {n} cases, vocabulary {len(tokens)} tokens", file=sys.stderr)


if __name__ == "__main__":
  main()
