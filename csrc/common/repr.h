// Numbers in error messages, written exactly as Python's repr(float) writes
// them (the shortest digits that read back as the same double; positional
// notation for exponents -4..15, else scientific), so a compiled kernel and a
// Python fake kernel word the same error the same way, and a message never
// shows two different values as equal (C++ streams print 6 significant digits:
// 0.30000000000000004 would read as 0.3).
#pragma once

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>

namespace manifold_ext {

inline std::string repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  const std::string scientific(buffer, result.ptr);  // e.g. "-1.5e-05", "1e+16"
  const size_t e = scientific.find('e');
  const int exponent = std::atoi(scientific.c_str() + e + 1);
  if (exponent < -4 || exponent >= 16) return scientific;
  const bool negative = scientific[0] == '-';
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < e; ++i) {
    if (scientific[i] != '.') digits += scientific[i];
  }
  const int point = exponent + 1;  // digits before the decimal point
  const int count = static_cast<int>(digits.size());
  std::string out = negative ? "-" : "";
  if (point <= 0) {
    out += "0." + std::string(static_cast<size_t>(-point), '0') + digits;
  } else if (point >= count) {
    out += digits + std::string(static_cast<size_t>(point - count), '0') + ".0";
  } else {
    out += digits.substr(0, static_cast<size_t>(point)) + "." + digits.substr(static_cast<size_t>(point));
  }
  return out;
}

}  // namespace manifold_ext
