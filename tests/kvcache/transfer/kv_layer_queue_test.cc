// KvLayerQueue: items come out in the order they went in, the end (a commit or a cancel) is
// the last item and nothing is taken after it, Next gives up at its deadline, and a consumer
// waiting on another thread wakes when a layer comes.
#include "kvcache/transfer/kv_layer_queue.h"

#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace tandem::kvcache {
namespace {

struct TestLayer {
  int layer = 0;
  std::string data;
};
using Queue = KvLayerQueue<TestLayer>;

TEST(KvLayerQueueTest, LayersThenTheCommitAndNothingAfter) {
  Queue q;
  q.Add({0, "a"});
  q.Add({1, "b"});
  q.Commit(42, 7);
  q.Add({2, "late"});
  q.Cancel("late too");
  q.Commit(43, 8);
  const absl::Time soon = absl::Now() + absl::Milliseconds(20);
  auto a = q.Next(soon);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->kind, Queue::Item::kLayer);
  EXPECT_EQ(a->layer, 0);
  EXPECT_EQ(a->data, "a");
  auto b = q.Next(soon);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->layer, 1);
  EXPECT_EQ(b->data, "b");
  auto c = q.Next(soon);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->kind, Queue::Item::kCommit);
  EXPECT_EQ(c->first_token, 42);
  EXPECT_EQ(c->seed, 7u);
  EXPECT_FALSE(q.Next(soon).has_value());  // what came after the end was dropped
}

TEST(KvLayerQueueTest, CancelEndsTheQueueWithItsReason) {
  Queue q;
  q.Add({0, "a"});
  q.Cancel("gone");
  q.Commit(1, 1);
  const absl::Time soon = absl::Now() + absl::Milliseconds(20);
  ASSERT_TRUE(q.Next(soon).has_value());
  auto end = q.Next(soon);
  ASSERT_TRUE(end.has_value());
  EXPECT_EQ(end->kind, Queue::Item::kCancel);
  EXPECT_EQ(end->reason, "gone");
  EXPECT_FALSE(q.Next(soon).has_value());
}

TEST(KvLayerQueueTest, NextWaitsForTheProducerOrItsDeadline) {
  Queue q;
  const absl::Time t0 = absl::Now();
  EXPECT_FALSE(q.Next(t0 + absl::Milliseconds(30)).has_value());
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(30));
  std::thread producer([&q] {
    absl::SleepFor(absl::Milliseconds(20));
    q.Add({5, "x"});
  });
  auto got = q.Next(absl::Now() + absl::Seconds(30));
  producer.join();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->layer, 5);
}

}  // namespace
}  // namespace tandem::kvcache
