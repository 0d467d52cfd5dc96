// Invariant checks for tandem: a broken invariant logs file:line and the values, then aborts.
// Recoverable failures (bad input, I/O, KV full) return absl::Status instead; see STYLE.md.
// Thread safety: every macro may be used from any thread.
#ifndef TANDEM_COMMON_CHECK_H_
#define TANDEM_COMMON_CHECK_H_

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

namespace tandem::internal {

[[noreturn]] inline void CheckFailed(const char* file, int line, const char* expr,
                                     const std::string& detail) {
  std::fprintf(stderr, "%s:%d: CHECK failed: %s %s\n", file, line, expr, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

template <typename A, typename B>
std::string CheckOpDetail(const A& a, const B& b) {
  std::ostringstream os;
  os << "(" << a << " vs " << b << ")";
  return os.str();
}

}  // namespace tandem::internal

#define TANDEM_CHECK(cond)                                                 \
  do {                                                                     \
    if (!(cond)) ::tandem::internal::CheckFailed(__FILE__, __LINE__, #cond, ""); \
  } while (0)

#define TANDEM_CHECK_OP_(op, a, b)                                                       \
  do {                                                                                   \
    const auto& tandem_a_ = (a);                                                         \
    const auto& tandem_b_ = (b);                                                         \
    if (!(tandem_a_ op tandem_b_))                                                       \
      ::tandem::internal::CheckFailed(__FILE__, __LINE__, #a " " #op " " #b,             \
                                      ::tandem::internal::CheckOpDetail(tandem_a_, tandem_b_)); \
  } while (0)

#define TANDEM_CHECK_EQ(a, b) TANDEM_CHECK_OP_(==, a, b)
#define TANDEM_CHECK_NE(a, b) TANDEM_CHECK_OP_(!=, a, b)
#define TANDEM_CHECK_LT(a, b) TANDEM_CHECK_OP_(<, a, b)
#define TANDEM_CHECK_LE(a, b) TANDEM_CHECK_OP_(<=, a, b)
#define TANDEM_CHECK_GT(a, b) TANDEM_CHECK_OP_(>, a, b)
#define TANDEM_CHECK_GE(a, b) TANDEM_CHECK_OP_(>=, a, b)

// Aborts with the status's message when `expr` (an absl::Status) is not OK.
#define TANDEM_CHECK_OK(expr)                                                       \
  do {                                                                              \
    const ::absl::Status tandem_check_status_ = (expr);                             \
    if (!tandem_check_status_.ok())                                                 \
      ::tandem::internal::CheckFailed(__FILE__, __LINE__, #expr " is OK",           \
                                      std::string(tandem_check_status_.message())); \
  } while (0)

// Returns early from a function that returns absl::Status / StatusOr when `expr` fails.
#define TANDEM_RETURN_IF_ERROR(expr)            \
  do {                                          \
    ::absl::Status tandem_status_ = (expr);     \
    if (!tandem_status_.ok()) return tandem_status_; \
  } while (0)

#define TANDEM_CONCAT_INNER_(a, b) a##b
#define TANDEM_CONCAT_(a, b) TANDEM_CONCAT_INNER_(a, b)
#define TANDEM_ASSIGN_OR_RETURN(lhs, expr) \
  TANDEM_ASSIGN_OR_RETURN_IMPL_(TANDEM_CONCAT_(tandem_statusor_, __LINE__), lhs, expr)
#define TANDEM_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()

#endif  // TANDEM_COMMON_CHECK_H_
