#include "common/flag_names.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::ElementsAre;

std::vector<std::string> Rewrite(std::vector<const char*> argv) {
  return UnderscoreFlagNames(static_cast<int>(argv.size()), argv.data());
}

TEST(UnderscoreFlagNamesTest, RewritesDashedNames) {
  EXPECT_THAT(Rewrite({"tandemd", "--max-num-seqs=8", "--kv-cache-dtype", "int8"}),
              ElementsAre("tandemd", "--max_num_seqs=8", "--kv_cache_dtype", "int8"));
}

TEST(UnderscoreFlagNamesTest, KeepsValuesAfterEquals) {
  EXPECT_THAT(Rewrite({"tandemd", "--model=/a-b/c-d.gguf", "--served-model-name=x-y=z-w"}),
              ElementsAre("tandemd", "--model=/a-b/c-d.gguf", "--served_model_name=x-y=z-w"));
}

TEST(UnderscoreFlagNamesTest, KeepsValuesInTheNextArgument) {
  EXPECT_THAT(Rewrite({"tandemd", "--model", "/a-b/c-d.gguf", "--api-key", "k-1"}),
              ElementsAre("tandemd", "--model", "/a-b/c-d.gguf", "--api_key", "k-1"));
}

TEST(UnderscoreFlagNamesTest, StopsAtDoubleDash) {
  EXPECT_THAT(Rewrite({"tandemd", "--max-num-seqs=8", "--", "--not-a-flag", "x-y"}),
              ElementsAre("tandemd", "--max_num_seqs=8", "--", "--not-a-flag", "x-y"));
}

TEST(UnderscoreFlagNamesTest, KeepsPositionalAndSingleDashArguments) {
  EXPECT_THAT(Rewrite({"./tandem-bench", "prompt-file.txt", "-v-x", "-", "--url=http://h-1:80"}),
              ElementsAre("./tandem-bench", "prompt-file.txt", "-v-x", "-", "--url=http://h-1:80"));
}

TEST(UnderscoreFlagNamesTest, KeepsProgramNameAndEmptyCommandLine) {
  EXPECT_THAT(Rewrite({"--odd-program-name"}), ElementsAre("--odd-program-name"));
  EXPECT_THAT(Rewrite({}), ElementsAre());
}

}  // namespace
}  // namespace tandem
