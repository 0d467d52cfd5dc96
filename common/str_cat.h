// tandem::StrCat: absl::StrCat that also takes std::string_view. Debian's Abseil (20220623)
// is built with its own absl::string_view type, so absl::StrCat rejects std::string_view.
// Thread safety: pure functions.
#ifndef TANDEM_COMMON_STR_CAT_H_
#define TANDEM_COMMON_STR_CAT_H_

#include <string>
#include <string_view>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace tandem {
namespace internal {

template <typename T>
decltype(auto) StrCatArg(const T& v) {
  if constexpr (std::is_same_v<T, std::string_view>) {
    return absl::string_view(v.data(), v.size());
  } else {
    return (v);
  }
}

}  // namespace internal

template <typename... Args>
std::string StrCat(const Args&... args) {
  return absl::StrCat(internal::StrCatArg(args)...);
}

}  // namespace tandem

#endif  // TANDEM_COMMON_STR_CAT_H_
