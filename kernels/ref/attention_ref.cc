#include "kernels/ref/attention_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/check.h"
#include "kernels/ref/ops_ref.h"

namespace tandem::kernels::ref {

void AttentionRef(const AttentionParams& p) {
  const KvCacheView& c = p.cache;
  TANDEM_CHECK_GT(p.n_kv_heads, 0);
  TANDEM_CHECK_EQ(p.n_heads % p.n_kv_heads, 0);
  TANDEM_CHECK_EQ(c.head_dim, p.head_dim);
  TANDEM_CHECK_GE(p.window, 0);
  const int d = p.head_dim;
  const int group = p.n_heads / p.n_kv_heads;
  std::vector<float> k_row(d), v_row(d);
  std::vector<double> scores, acc(d);
  for (int t = 0; t < p.n_tokens; ++t) {
    const int seq = p.token_seq[t];
    const int pos = p.positions[t];
    TANDEM_CHECK(seq >= 0 && seq < p.n_seqs);
    TANDEM_CHECK(pos >= 0 && pos / c.block_size < p.max_blocks_per_seq);
    const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
    // Positions [first, pos]: the sliding window, or the whole causal context.
    const int first = p.window > 0 ? std::max(0, pos - p.window + 1) : 0;
    for (int h = 0; h < p.n_heads; ++h) {
      const int kv_head = h / group;
      const float* q = p.q + (static_cast<int64_t>(t) * p.n_heads + h) * d;
      scores.assign(pos + 1 - first, 0.0);
      for (int j = first; j <= pos; ++j) {
        const int block = table[j / c.block_size];
        TANDEM_CHECK(block >= 0 && block < c.n_blocks);
        KvReadRowRef(c, false, p.layer, block, kv_head, j % c.block_size, k_row.data());
        double dot = 0;
        for (int i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * k_row[i];
        scores[j - first] = dot * p.scale;
      }
      const double mx = *std::max_element(scores.begin(), scores.end());
      double sum = 0;
      for (double& s : scores) {
        s = std::exp(s - mx);
        sum += s;
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int j = first; j <= pos; ++j) {
        KvReadRowRef(c, true, p.layer, table[j / c.block_size], kv_head, j % c.block_size,
                     v_row.data());
        for (int i = 0; i < d; ++i) acc[i] += scores[j - first] * v_row[i];
      }
      float* out = p.out + (static_cast<int64_t>(t) * p.n_heads + h) * d;
      for (int i = 0; i < d; ++i) out[i] = static_cast<float>(acc[i] / sum);
    }
  }
}

}  // namespace tandem::kernels::ref
