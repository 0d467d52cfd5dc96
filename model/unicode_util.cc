#include "model/unicode_util.h"

#include <array>

namespace tandem::model::unicode {
namespace {

bool IsContinuation(uint8_t b) { return (b & 0xC0) == 0x80; }

struct ByteAlphabet {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 0x144> cp_to_byte{};  // every alphabet code point is < 0x144

  ByteAlphabet() {
    cp_to_byte.fill(-1);
    // Bytes that are printable (and not a space) in Latin-1 keep their own code point; the
    // remaining 68 bytes take U+0100 onwards in byte order. This is GPT-2's published scheme.
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      byte_to_cp[b] = cp;
      cp_to_byte[cp] = static_cast<int16_t>(b);
      AppendUtf8(cp, &byte_to_utf8[b]);
    }
  }
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* alphabet = new ByteAlphabet();
  return *alphabet;
}

}  // namespace

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string RepairInputUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t b0 = static_cast<uint8_t>(text[i]);
    if (b0 < 0x80) {
      out.push_back(static_cast<char>(b0));
      ++i;
      continue;
    }
    // Sequence length from the lead byte's high bits; 10xxxxxx and 11111xxx start nothing.
    size_t len = 0;
    uint32_t cp = 0;
    if ((b0 & 0xE0) == 0xC0) {
      len = 2;
      cp = b0 & 0x1F;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3;
      cp = b0 & 0x0F;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4;
      cp = b0 & 0x07;
    }
    bool ok = len != 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      const uint8_t c = static_cast<uint8_t>(text[i + k]);
      ok = IsContinuation(c);
      cp = (cp << 6) | (c & 0x3F);
    }
    if (!ok) {
      AppendUtf8(kReplacementChar, &out);
      ++i;
      continue;
    }
    if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) cp = kReplacementChar;
    AppendUtf8(cp, &out);
    i += len;
  }
  return out;
}

size_t AppendValidUtf8(std::string_view in, bool final, std::string* out) {
  const size_t n = in.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t b = static_cast<uint8_t>(in[i]);
    if (b < 0x80) {
      out->push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    // Continuation count and the allowed range of the second byte (RFC 3629 table 3-7):
    // the narrowed ranges exclude overlongs (E0, F0), surrogates (ED) and > U+10FFFF (F4).
    size_t need = 0;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
    } else if (b == 0xE0) {
      need = 2;
      lo = 0xA0;
    } else if (b == 0xED) {
      need = 2;
      hi = 0x9F;
    } else if (b >= 0xE1 && b <= 0xEF) {
      need = 2;
    } else if (b == 0xF0) {
      need = 3;
      lo = 0x90;
    } else if (b >= 0xF1 && b <= 0xF3) {
      need = 3;
    } else if (b == 0xF4) {
      need = 3;
      hi = 0x8F;
    } else {
      AppendUtf8(kReplacementChar, out);
      ++i;
      continue;
    }
    size_t j = 1;
    bool bad = false;
    for (; j <= need; ++j) {
      if (i + j >= n) {
        if (!final) return i;  // incomplete so far: wait for more bytes
        AppendUtf8(kReplacementChar, out);
        return n;
      }
      const uint8_t c = static_cast<uint8_t>(in[i + j]);
      const uint8_t l = j == 1 ? lo : 0x80;
      const uint8_t h = j == 1 ? hi : 0xBF;
      if (c < l || c > h) {
        bad = true;
        break;
      }
    }
    if (bad) {
      // The lead and the j-1 continuation bytes before the offending one form one
      // maximal ill-formed subpart; the offending byte is examined afresh.
      AppendUtf8(kReplacementChar, out);
      i += j;
      continue;
    }
    out->append(in.data() + i, need + 1);
    i += need + 1;
  }
  return n;
}

std::string SanitizeUtf8(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  AppendValidUtf8(in, /*final=*/true, &out);
  return out;
}

bool IsValidUtf8(std::string_view in) {
  // Repair never shortens valid input and changes every invalid byte run, so the input is
  // valid exactly when repairing leaves it unchanged.
  return SanitizeUtf8(in) == in;
}

uint32_t ByteToCodepoint(uint8_t byte) { return Alphabet().byte_to_cp[byte]; }

std::string_view ByteToUtf8(uint8_t byte) { return Alphabet().byte_to_utf8[byte]; }

int CodepointToByte(uint32_t cp) {
  const auto& table = Alphabet().cp_to_byte;
  return cp < table.size() ? table[cp] : -1;
}

uint32_t NextCodepoint(std::string_view s, size_t* pos) {
  const size_t i = *pos;
  const uint8_t b0 = static_cast<uint8_t>(s[i]);
  size_t len = 1;
  uint32_t cp = b0;
  if (b0 >= 0xC0 && b0 < 0xE0) {
    len = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 < 0xF0) {
    len = 3;
    cp = b0 & 0x0F;
  } else if (b0 >= 0xF0 && b0 < 0xF8) {
    len = 4;
    cp = b0 & 0x07;
  }
  if (len == 1 || i + len > s.size()) {
    *pos = i + 1;
    return b0;
  }
  for (size_t k = 1; k < len; ++k) {
    const uint8_t c = static_cast<uint8_t>(s[i + k]);
    if (!IsContinuation(c)) {
      *pos = i + 1;
      return b0;
    }
    cp = (cp << 6) | (c & 0x3F);
  }
  *pos = i + len;
  return cp;
}

}  // namespace tandem::model::unicode
