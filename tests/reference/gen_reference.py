#!/usr/bin/env python3
"""Writes tandem's reference data from llama.cpp (through llama-cpp-python).

Outputs, all in this folder (see README.md):
  tokenizer_cases.jsonl  tokenizer ids for >= 300 strings
  greedy.json            64 greedy tokens (+ top-2 logit gaps) for >= 20 prompts
  last_logits.bin/.json  full logits of the last prompt position for each greedy prompt

Deterministic: fixed strings, a seeded RNG for the generated mixes, greedy argmax, n_threads=2,
one sequence, prompt evaluated as one batch then one token per step.
"""

import argparse
import ctypes
import hashlib
import json
import os
import random
import struct
import sys

import jinja2
import numpy as np
import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# How the llama-cpp-python wheel used for the committed files was built (see REFERENCE.md).
CMAKE_ARGS = os.environ.get(
    "TANDEM_LLAMA_CMAKE_ARGS",
    "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON "
    "-DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=OFF")
# The llama.cpp commit vendored by llama-cpp-python 0.3.36 (its sdist's
# .git/modules/vendor/llama.cpp/HEAD).
LLAMA_CPP_COMMIT = os.environ.get("TANDEM_LLAMA_CPP_COMMIT",
                                  "0c1e57098bba43ac29e6e3b677cdceebdd22334f")

N_GENERATE = 64
N_THREADS = 2
N_CTX = 2048

# --------------------------------------------------------------------------------------------
# Tokenizer strings.

PROSE = [
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "Call me Ishmael. Some years ago—never mind how long precisely—having little money...",
    "In 1492, Columbus sailed the ocean blue.",
    "She said: \"I can't believe it's not butter!\"",
    "Mr. and Mrs. Dursley, of number four, Privet Drive, were proud to say that they were "
    "perfectly normal, thank you very much.",
    "To be, or not to be: that is the question.",
    "e.g. i.e. etc. vs. Dr. St. Jr.",
    "The U.S.A. and the U.K. signed the treaty on 3/4/2021 at 10:30am.",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "camelCaseIdentifier and snake_case_identifier and kebab-case-identifier",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a",
    "A",
    " ",
    "hello",
    " hello",
    "  hello",
    "hello ",
    "hello  ",
    "Hello World Hello World Hello World",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "abababababababababababab",
    "The year 2024 had 366 days; 2023 had 365.",
    "Email me at john.doe@example.com or visit https://example.org/path?q=1&r=2#frag",
    "C:\\Users\\name\\Documents\\file.txt",
    "/usr/local/bin/python3 --version",
    "#hashtag @mention $dollar %percent ^caret &amp *star",
    "Price: $1,299.99 (incl. 20% VAT)",
    "He scored 98.6% on the test; she scored 100%.",
    "Q: What is 2+2? A: 4.",
    "Temperature: -40°C = -40°F",
    "1st 2nd 3rd 4th 21st 101st",
    "Version v1.2.3-beta+build.45",
    "The end.",
]

CONTRACTIONS = [
    "don't", "Don't", "DON'T", "I'LL", "I'll", "i'll", "we've", "We'VE", "you're", "YOU'RE",
    "she'd", "he's", "it's", "It'S", "I'm", "I'M", "they'll", "can't won't shouldn't",
    "'s 't 're 've 'm 'll 'd", "rock'n'roll", "o'clock", "'quoted'", "''double''",
    "the dog's bone", "James' car", "’curly’ apostrophe don’t",
]

NUMBERS = [
    "0", "7", "42", "123", "1234", "12345", "123456", "1234567", "12345678", "123456789",
    "1234567890", "12345678901234567890", "3.14159", "2.718281828459045", "1,000,000",
    "1.000.000,00", "-17", "+3", "1e10", "6.022e23", "0x1F2E3D", "0b101010", "007",
    "3/4", "50%", "99.9%", "$5", "£20", "€30", "¥400", "10:45:30", "2024-01-15",
    "555-123-4567", "+1 (555) 123-4567", "1 2 3 4 5", "1  2   3", "one1two2three3",
    "x1y22z333", "v2", "²³¹", "½ ¼ ¾", "Ⅻ Ⅳ", "٠١٢٣٤٥٦٧٨٩", "१२३", "一二三", "１２３",
]

CODE = [
    "def foo(x):\n    return x * 2\n",
    "import numpy as np\nimport torch.nn.functional as F\n",
    "for i in range(10):\n\tprint(i)\n",
    "class Foo(Base):\n    def __init__(self, a: int = 0) -> None:\n        self.a = a\n",
    "if __name__ == \"__main__\":\n    main()\n",
    "lambda x, y: (x ** 2 + y ** 2) ** 0.5",
    "x = [i for i in range(100) if i % 3 == 0]",
    "print(f\"{name!r:>10} = {value:.3f}\")",
    "#include <iostream>\n\nint main() {\n  std::cout << \"Hello\" << std::endl;\n  return 0;\n}\n",
    "template <typename T>\nT max(const T& a, const T& b) { return a > b ? a : b; }",
    "std::vector<std::unique_ptr<Foo>> v; v.emplace_back(std::make_unique<Foo>());",
    "a->b = c::d; e += f++; g <<= 2; h != i && j || !k;",
    "/* block comment */ // line comment",
    "#define MAX(a, b) ((a) > (b) ? (a) : (b))",
    "{\"name\": \"tandem\", \"version\": 1, \"tags\": [\"a\", \"b\"], \"ok\": true, \"x\": null}",
    "{\n  \"key\": {\n    \"nested\": [1, 2, 3]\n  }\n}",
    "<!DOCTYPE html>\n<html>\n<head><title>Test</title></head>\n<body><p class=\"x\">Hi</p></body>\n</html>",
    "<div id=\"main\" style=\"color: red;\">&lt;escaped&gt; &amp; more</div>",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    "fn main() { let v: Vec<u32> = (0..10).collect(); println!(\"{:?}\", v); }",
    "const add = (a, b) => a + b; console.log(`sum: ${add(1, 2)}`);",
    "$ git commit -m \"fix: handle empty input\" && git push origin main",
    "    indented with four spaces",
    "\tindented with a tab",
    "\t\t\tthree tabs",
    "if (x) {\n\n\n}\n",
    "key: value\nlist:\n  - item1\n  - item2\n",
    "| col1 | col2 |\n|------|------|\n| a    | b    |",
    "```python\nprint('hi')\n```",
    "x=1;y=2;z=x+y",
    "a==b!=c<=d>=e",
    "...---...",
    "!!!???",
    "((((()))))",
    "[[{{<<>>}}]]",
    "=====",
    "-----",
    "_____",
    "*****",
    "~~~~~",
]

UNICODE = [
    "café", "naïve résumé", "Ångström", "São Paulo", "Zürich", "Straße", "ﬁ ligature",
    "Crème brûlée à la française", "e\u0301 (combining acute)", "n\u0303o",
    "日本語のテキスト", "中文文本测试", "你好，世界！", "한국어 텍스트", "ひらがな カタカナ",
    "مرحبا بالعالم", "السلام عليكم", "नमस्ते दुनिया", "हिन्दी भाषा", "Привет, мир!",
    "Здравствуйте", "Ελληνικά γράμματα", "שלום עולם", "ภาษาไทย", "Tiếng Việt có dấu",
    "ᚠᚢᚦᚨᚱᚲ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math", "𝟘𝟙𝟚", "Ω≈ç√∫˜µ≤≥÷", "∀x∈ℝ: x²≥0", "→ ← ↑ ↓ ⇒",
    "™ © ®", "§ ¶ † ‡", "«quotes» „German“ “English”", "…", "— – -",
    "\u00a0non-breaking\u00a0space", "zero\u200bwidth\u200bspace", "ideographic\u3000space",
    "en\u2002space em\u2003space", "line\u2028separator", "soft\u00adhyphen",
    "\u0085next line", "tab\u000bvertical", "form\u000cfeed", "bell\u0007char", "nul\u0000byte",
    "private\ue000use", "unassigned\U000e0fffcp", "BOM\ufeffmark", "rtl\u200fmark",
    # Bytes whose alphabet character is not in SmolLM2's vocabulary (04 06 13 14 16 1D, and
    # the lead bytes F1 F2 of planes 4..11): llama.cpp drops them, and so must tandem.
    "\x04", "a\x04b", "\x06\x13\x14\x16\x1d", "x\U00040000y", "\U00090000",
]

EMOJI = [
    "😀", "😀😀😀", "I love pizza 🍕!", "👍🏽", "👨‍👩‍👧‍👦", "👩‍💻 coding", "🏳️‍🌈", "🇺🇸🇬🇧🇯🇵",
    "🇫🇷 France", "❤️", "✨ sparkle ✨", "🤖🧠💡", "1️⃣ 2️⃣ #️⃣", "🧑🏿‍🚀", "🐈‍⬛", "emoji:🙂,ok",
]

WHITESPACE = [
    "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", " \n", "\n ",
    " \t \n ", "a b", "a  b", "a   b", "a    b", "a\tb", "a\t\tb", "a\nb", "a\n\nb", "a \nb",
    "a\n b", "a \n b", "  leading", "trailing  ", "  both  ", "\n\nleading newlines",
    "trailing newlines\n\n", "mixed \t\n \t\n end", "word\n\n\n\n\nword", "x" + " " * 20 + "y",
    " " * 17, "\t" * 9, "\n" * 12, "a\u3000\u3000b", "1 \n2", " 1", "  1", "\n1", "a 1", "a  1",
]

PUNCT = [
    ".", ",", "!", "?", "...", "?!", "!!!", ".,;:", "'", "\"", "''", "\"\"\"", "'''", "``",
    "--", "->", "=>", "<-", "::", "//", "/*", "*/", "#!", "@@", "$$", "%%", "^^", "&&", "||",
    "(a)", "[b]", "{c}", "<d>", "a.b.c", "a,b,c", "a;b;c", "end.", "end..", "end...",
    "Wait... what?!", "Hmm—really?", "(see: [1], [2])",
]

SPECIAL = [
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<|im_start|><|im_end|>",
    "<|im_start|><|im_start|>",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start",
    "<|im_start|",
    "im_start|>",
    "<|IM_START|>",
    "<repo_name>tandem<file_sep>model/tokenizer.cc",
    "<filename>main.py\n<gh_stars>100",
    "<jupyter_start><jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<issue_start>bug<issue_comment>fixed<issue_closed>",
    "<reponame><repo_name>",
    "a<|im_end|>b<|im_end|>c",
    "<|im_start|>assistant\n```json\n{\"a\": 1}\n```<|im_end|>",
    "<|endoftext|><|endoftext|><|endoftext|>",
    "<<|im_start|>>",
]

# Cases tokenized with special=False: special tokens' text must be split like plain text.
NON_SPECIAL = [
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    "<repo_name>tandem<file_sep>",
    "plain text without specials",
    "<jupyter_code>x = 1",
]


# Malformed UTF-8, stored hex-encoded ("hex" instead of "text"). llama.cpp reads each byte
# that does not start a complete sequence as U+FFFD. Surrogates (ED A0 80) and lead bytes
# F5..F7 are left out: there llama.cpp passes the raw value through (or throws) while
# tandem substitutes U+FFFD, a documented difference.
INVALID_UTF8 = [
    b"\xff", b"\x80", b"abc\x80def", b"\xe2\x82", b"caf\xc3", b"\xc0\xaf", b"\xe0\x80\xaf",
    b"\xf8\x88\x80\x80\x80", b"ok \xfe\xff ok", b"\xe2\x28\xa1", b"\xf0\x9f\x98",
    b"\xf0\x9f\x98 x", b"<|im_start|>\xff<|im_end|>", b"12\xff34",
]


def random_mixes(n, seed):
  """Seeded random concatenations of short pieces from every category (readable)."""
  rng = random.Random(seed)
  pieces = (PROSE[:20] + CONTRACTIONS + NUMBERS + UNICODE[:30] + EMOJI + PUNCT
            + ["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
  seps = ["", " ", "  ", "\n", "\t", " \n", "\n\n", ", ", ". "]
  out = []
  for _ in range(n):
    k = rng.randint(2, 6)
    s = ""
    for j in range(k):
      if j:
        s += rng.choice(seps)
      s += rng.choice(pieces)
    out.append(s)
  return out


def random_digit_runs(n, seed):
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    length = rng.randint(1, 24)
    digits = "".join(rng.choice("0123456789") for _ in range(length))
    fmt = rng.choice(["{}", " {}", "x{}", "{}.5", "({})", "{} apples", "-{}"])
    out.append(fmt.format(digits))
  return out


def random_codepoints(n, seed):
  """Seeded strings of random code points from every plane (assigned or not, no
  surrogates), mixed with ASCII letters, digits, spaces and apostrophes: these probe the
  Unicode category tables (letter / number / whitespace / other) where two
  implementations are most likely to disagree."""
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    s = ""
    for _ in range(rng.randint(1, 8)):
      r = rng.random()
      if r < 0.4:
        cp = rng.randrange(0x110000)
      elif r < 0.7:
        cp = rng.randrange(0x80, 0x3000)
      else:
        cp = ord(rng.choice(" \n\taA1'."))
      if not 0xD800 <= cp <= 0xDFFF:
        s += chr(cp)
    out.append(s)
  return out


def long_text():
  """A ~4 KB passage mixing everything: catches merge-order bugs inside long words."""
  parts = PROSE + CODE[:10] + UNICODE[:20] + EMOJI[:8]
  return "\n".join(parts)


def tokenizer_strings():
  cases = []
  for group in (PROSE, CONTRACTIONS, NUMBERS, CODE, UNICODE, EMOJI, WHITESPACE, PUNCT, SPECIAL):
    cases += [(s, True) for s in group]
  cases += [(s, True) for s in random_mixes(60, seed=1234)]
  cases += [(s, True) for s in random_digit_runs(20, seed=99)]
  cases += [(s, True) for s in random_codepoints(300, seed=7)]
  cases.append((long_text(), True))
  cases += [(s, False) for s in NON_SPECIAL]
  cases += [(s, False) for s in random_mixes(8, seed=77)]
  # Deduplicate, keeping the first occurrence, so every line is a distinct case.
  seen, unique = set(), []
  for s, special in cases:
    if (s, special) not in seen:
      seen.add((s, special))
      unique.append((s, special))
  return unique


# --------------------------------------------------------------------------------------------
# Greedy prompts.

PLAIN_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):\n",
    "The three primary colors are",
    "Water boils at a temperature of",
    "1, 2, 3, 4, 5,",
    "Machine learning is a field of study that",
    "#include <stdio.h>\n\nint main(void) {\n",
    "The best way to learn a new language is",
    "Q: What is the largest planet in the solar system?\nA:",
]

CHAT_PROMPTS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "What is the capital of Japan?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "Explain what a hash table is in one paragraph."}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "user", "content": "What is 12 * 7?"}],
    [{"role": "user", "content": "List three fruits."}],
    [{"role": "system", "content": "You are a pirate. Answer like a pirate."},
     {"role": "user", "content": "How are you today?"}],
    [{"role": "system", "content": "Reply in French."},
     {"role": "user", "content": "Good morning!"}],
    [{"role": "user", "content": "What is the boiling point of water?"},
     {"role": "assistant", "content": "100 degrees Celsius at sea level."},
     {"role": "user", "content": "And in Fahrenheit?"}],
    [{"role": "user", "content": "Translate 'thank you' into Spanish."}],
    [{"role": "user", "content": "Give me a JSON object with keys name and age."}],
    [{"role": "user", "content": "Tell me a fun fact about octopuses."}],
    [{"role": "user", "content": "Summarize: The cat sat on the mat. It was warm. "
                                 "The cat fell asleep."}],
]


def render_chat(template, messages):
  # Hugging Face renders chat templates with trim_blocks and lstrip_blocks on.
  env = jinja2.Environment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True)
  return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                          bos_token="<|im_start|>", eos_token="<|im_end|>")


# --------------------------------------------------------------------------------------------


def sha256_of(path):
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def token_piece(llm, token):
  """llama_token_to_piece with special tokens rendered (Llama.detokenize truncates >32 B)."""
  vocab = llama_cpp.llama_model_get_vocab(llm.model)
  size = 256
  while True:
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, True)
    if n >= 0:
      return buf.raw[:n]
    size = -n


def last_logits(llm):
  n_vocab = llm.n_vocab()
  ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
  return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default=DEFAULT_MODEL)
  ap.add_argument("--out", default=HERE)
  ap.add_argument("--tokenizer-only", action="store_true",
                  help="write tokenizer_cases.jsonl only (seconds instead of minutes)")
  args = ap.parse_args()

  header = {
      "generator": "tests/reference/gen_reference.py",
      "llama_cpp_python_version": llama_cpp.__version__,
      "llama_cpp_commit": LLAMA_CPP_COMMIT,
      "cmake_args": CMAKE_ARGS,
      "system_info": llama_cpp.llama_print_system_info().decode().strip(),
      "model": os.path.basename(args.model),
      "model_sha256": sha256_of(args.model),
      "n_threads": N_THREADS,
  }

  llm = llama_cpp.Llama(model_path=args.model, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=512,
                        n_threads=N_THREADS, n_threads_batch=N_THREADS, logits_all=False,
                        verbose=False, seed=0)

  # 1. Tokenizer cases.
  cases = tokenizer_strings()
  with open(os.path.join(args.out, "tokenizer_cases.jsonl"), "w", encoding="utf-8") as f:
    f.write(json.dumps({"header": header, "count": len(cases) + len(INVALID_UTF8)},
                       ensure_ascii=False) + "\n")
    # "decoded_hex" is added where llama.cpp's detokenization (special tokens rendered) does
    # not give the input back: malformed UTF-8 and bytes missing from the vocabulary.
    for text, special in cases:
      raw = text.encode("utf-8")
      ids = llm.tokenize(raw, add_bos=False, special=special)
      rec = {"text": text, "special": special, "ids": ids}
      decoded = b"".join(token_piece(llm, t) for t in ids)
      if decoded != raw:
        rec["decoded_hex"] = decoded.hex()
      f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    for raw in INVALID_UTF8:
      ids = llm.tokenize(raw, add_bos=False, special=True)
      rec = {"hex": raw.hex(), "special": True, "ids": ids,
             "decoded_hex": b"".join(token_piece(llm, t) for t in ids).hex()}
      f.write(json.dumps(rec) + "\n")
  print(f"tokenizer_cases.jsonl: {len(cases) + len(INVALID_UTF8)} cases", file=sys.stderr)

  if args.tokenizer_only:
    return

  # 2./3. Greedy generations and last-position logits.
  template = llm.metadata["tokenizer.chat_template"]
  prompts = [{"kind": "plain", "prompt": p} for p in PLAIN_PROMPTS]
  prompts += [{"kind": "chat", "messages": m, "prompt": render_chat(template, m)}
              for m in CHAT_PROMPTS]
  n_vocab = llm.n_vocab()
  records, all_logits = [], []
  for p in prompts:
    prompt_tokens = llm.tokenize(p["prompt"].encode("utf-8"), add_bos=False, special=True)
    llm.reset()
    llm.eval(prompt_tokens)
    logits = last_logits(llm)
    all_logits.append(logits)
    tokens, gaps = [], []
    for _ in range(N_GENERATE):
      order = np.argsort(-logits, kind="stable")
      top1, top2 = int(order[0]), int(order[1])
      tokens.append(top1)
      gaps.append(float(logits[top1] - logits[top2]))
      llm.eval([top1])
      logits = last_logits(llm)
    rec = dict(p)
    rec["prompt_tokens"] = prompt_tokens
    rec["tokens"] = tokens
    rec["top2_gap"] = gaps
    rec["text"] = b"".join(token_piece(llm, t) for t in tokens).decode("utf-8", errors="replace")
    records.append(rec)
    print(f"greedy: {len(prompt_tokens)} prompt tokens, min gap {min(gaps):.4f}",
          file=sys.stderr)

  with open(os.path.join(args.out, "greedy.json"), "w", encoding="utf-8") as f:
    json.dump({"header": dict(header, n_generate=N_GENERATE,
                              note="greedy argmax, no penalties, EOS not special-cased; "
                                   "prompt evaluated as one batch, then one token per step"),
               "prompts": records}, f, ensure_ascii=False, indent=1)

  with open(os.path.join(args.out, "last_logits.bin"), "wb") as f:
    for logits in all_logits:
      f.write(logits.astype("<f4").tobytes())
  with open(os.path.join(args.out, "last_logits.json"), "w", encoding="utf-8") as f:
    json.dump({"header": dict(header, dtype="float32", byteorder="little",
                              n_vocab=n_vocab, count=len(all_logits),
                              layout="[count][n_vocab], prompts in greedy.json order; logits "
                                     "of the last prompt position, before generation"),
               "prompts": [{"index": i, "prompt": r["prompt"],
                            "prompt_tokens": r["prompt_tokens"]}
                           for i, r in enumerate(records)]},
              f, ensure_ascii=False, indent=1)
  print("done", file=sys.stderr)


if __name__ == "__main__":
  main()
