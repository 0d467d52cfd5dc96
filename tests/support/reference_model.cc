#include "tests/support/reference_model.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace tandem::testing {
namespace {

absl::StatusOr<std::vector<float>> Dequantize(const model::GgufFile& file,
                                              const std::string& name) {
  const model::GgufTensor* t = file.FindTensor(name);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat("missing tensor ", name));
  const int64_t cols = t->dims[0];
  const int64_t rows = t->Rows();
  std::vector<float> out(rows * cols);
  const int64_t row_bytes = kernels::RowBytes(t->type, cols);
  for (int64_t r = 0; r < rows; ++r) {
    kernels::DequantizeRow(t->type, static_cast<const uint8_t*>(t->data) + r * row_bytes, cols,
                           out.data() + r * cols);
  }
  return out;
}

// y[rows] = W[rows, cols] x[cols]
std::vector<double> MatVec(const std::vector<float>& w, const std::vector<double>& x,
                           int64_t rows) {
  const int64_t cols = static_cast<int64_t>(x.size());
  std::vector<double> y(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double acc = 0;
    const float* row = w.data() + r * cols;
    for (int64_t c = 0; c < cols; ++c) acc += row[c] * x[c];
    y[r] = acc;
  }
  return y;
}

std::vector<double> RmsNorm(const std::vector<double>& x, const std::vector<float>& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * inv * w[i];
  return out;
}

void Rope(double* head, int head_dim, int rot_dim, int pos, double theta,
          kernels::RopeStyle style) {
  for (int i = 0; i < rot_dim / 2; ++i) {
    const double freq = std::pow(theta, -2.0 * i / rot_dim);
    const double a = pos * freq;
    const double c = std::cos(a), s = std::sin(a);
    const int i0 = style == kernels::RopeStyle::kNormal ? 2 * i : i;
    const int i1 = style == kernels::RopeStyle::kNormal ? 2 * i + 1 : i + rot_dim / 2;
    const double x0 = head[i0], x1 = head[i1];
    head[i0] = x0 * c - x1 * s;
    head[i1] = x0 * s + x1 * c;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ReferenceModel>> ReferenceModel::Create(
    const model::GgufFile& file) {
  auto m = std::make_unique<ReferenceModel>();
  TANDEM_ASSIGN_OR_RETURN(m->config_, model::ModelConfig::FromGguf(file));
  const model::ModelConfig& c = m->config_;
  TANDEM_ASSIGN_OR_RETURN(m->token_embd_, Dequantize(file, "token_embd.weight"));
  if (!c.tied_embeddings) {
    TANDEM_ASSIGN_OR_RETURN(m->output_, Dequantize(file, "output.weight"));
  }
  TANDEM_ASSIGN_OR_RETURN(m->output_norm_, Dequantize(file, "output_norm.weight"));
  m->layers_.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    Layer& l = m->layers_[i];
    const std::string p = absl::StrCat("blk.", i, ".");
    TANDEM_ASSIGN_OR_RETURN(l.attn_norm, Dequantize(file, p + "attn_norm.weight"));
    TANDEM_ASSIGN_OR_RETURN(l.ffn_norm, Dequantize(file, p + "ffn_norm.weight"));
    TANDEM_ASSIGN_OR_RETURN(l.wq, Dequantize(file, p + "attn_q.weight"));
    TANDEM_ASSIGN_OR_RETURN(l.wk, Dequantize(file, p + "attn_k.weight"));
    TANDEM_ASSIGN_OR_RETURN(l.wv, Dequantize(file, p + "attn_v.weight"));
    TANDEM_ASSIGN_OR_RETURN(l.wo, Dequantize(file, p + "attn_output.weight"));
    TANDEM_ASSIGN_OR_RETURN(l.w_gate, Dequantize(file, p + "ffn_gate.weight"));
    TANDEM_ASSIGN_OR_RETURN(l.w_up, Dequantize(file, p + "ffn_up.weight"));
    TANDEM_ASSIGN_OR_RETURN(l.w_down, Dequantize(file, p + "ffn_down.weight"));
    if (c.has_qkv_bias) {
      TANDEM_ASSIGN_OR_RETURN(l.bq, Dequantize(file, p + "attn_q.bias"));
      TANDEM_ASSIGN_OR_RETURN(l.bk, Dequantize(file, p + "attn_k.bias"));
      TANDEM_ASSIGN_OR_RETURN(l.bv, Dequantize(file, p + "attn_v.bias"));
    }
    if (c.has_qk_norm) {
      TANDEM_ASSIGN_OR_RETURN(l.q_norm, Dequantize(file, p + "attn_q_norm.weight"));
      TANDEM_ASSIGN_OR_RETURN(l.k_norm, Dequantize(file, p + "attn_k_norm.weight"));
    }
    if (c.has_post_norms) {
      TANDEM_ASSIGN_OR_RETURN(l.post_attn_norm, Dequantize(file, p + "post_attention_norm.weight"));
      TANDEM_ASSIGN_OR_RETURN(l.post_ffn_norm, Dequantize(file, p + "post_ffw_norm.weight"));
    }
  }
  return m;
}

std::vector<std::vector<float>> ReferenceModel::Forward(const std::vector<int32_t>& tokens) const {
  const model::ModelConfig& c = config_;
  const int n = static_cast<int>(tokens.size());
  const int hd = c.head_dim;
  const int group = c.n_heads / c.n_kv_heads;
  std::vector<std::vector<double>> x(n, std::vector<double>(c.hidden));
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < c.hidden; ++i) {
      x[t][i] = token_embd_[tokens[t] * c.hidden + i] * static_cast<double>(c.embedding_scale);
    }
  }
  for (int il = 0; il < c.n_layers; ++il) {
    const Layer& l = layers_[il];
    const double theta = c.LayerRopeTheta(il);
    const int window = c.LayerWindow(il);
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int t = 0; t < n; ++t) {
      const std::vector<double> h = RmsNorm(x[t], l.attn_norm, c.rms_eps);
      q[t] = MatVec(l.wq, h, c.q_dim());
      k[t] = MatVec(l.wk, h, c.kv_dim());
      v[t] = MatVec(l.wv, h, c.kv_dim());
      if (c.has_qkv_bias) {
        for (int i = 0; i < c.q_dim(); ++i) q[t][i] += l.bq[i];
        for (int i = 0; i < c.kv_dim(); ++i) {
          k[t][i] += l.bk[i];
          v[t][i] += l.bv[i];
        }
      }
      if (c.has_qk_norm) {  // each head normalized on its own
        auto norm_heads = [&](std::vector<double>& x2, int heads, const std::vector<float>& w) {
          for (int h2 = 0; h2 < heads; ++h2) {
            std::vector<double> head(x2.begin() + h2 * hd, x2.begin() + (h2 + 1) * hd);
            head = RmsNorm(head, w, c.rms_eps);
            std::copy(head.begin(), head.end(), x2.begin() + h2 * hd);
          }
        };
        norm_heads(q[t], c.n_heads, l.q_norm);
        norm_heads(k[t], c.n_kv_heads, l.k_norm);
      }
      for (int h2 = 0; h2 < c.n_heads; ++h2) {
        Rope(&q[t][h2 * hd], hd, c.rope_dim, t, theta, c.rope_style);
      }
      for (int h2 = 0; h2 < c.n_kv_heads; ++h2) {
        Rope(&k[t][h2 * hd], hd, c.rope_dim, t, theta, c.rope_style);
      }
    }
    for (int t = 0; t < n; ++t) {
      std::vector<double> attn(c.q_dim(), 0.0);
      for (int h2 = 0; h2 < c.n_heads; ++h2) {
        const int kvh = h2 / group;
        // Keys j with t - j < window (all of 0..t when the layer has no window).
        const int first = window > 0 ? std::max(0, t - window + 1) : 0;
        std::vector<double> scores(t + 1, 0.0);
        double mx = -1e300;
        for (int j = first; j <= t; ++j) {
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += q[t][h2 * hd + d] * k[j][kvh * hd + d];
          scores[j] = dot * static_cast<double>(c.attention_scale);
          mx = std::max(mx, scores[j]);
        }
        double sum = 0;
        for (int j = first; j <= t; ++j) sum += (scores[j] = std::exp(scores[j] - mx));
        for (int j = first; j <= t; ++j) {
          for (int d = 0; d < hd; ++d) attn[h2 * hd + d] += scores[j] / sum * v[j][kvh * hd + d];
        }
      }
      std::vector<double> o = MatVec(l.wo, attn, c.hidden);
      if (c.has_post_norms) o = RmsNorm(o, l.post_attn_norm, c.rms_eps);
      for (int i = 0; i < c.hidden; ++i) x[t][i] += o[i];
      const std::vector<double> h = RmsNorm(x[t], l.ffn_norm, c.rms_eps);
      const std::vector<double> g = MatVec(l.w_gate, h, c.ffn_dim);
      const std::vector<double> u = MatVec(l.w_up, h, c.ffn_dim);
      std::vector<double> a(c.ffn_dim);
      for (int i = 0; i < c.ffn_dim; ++i) {
        if (c.ffn_activation == model::FfnActivation::kGeluTanh) {
          const double z = std::sqrt(2.0 / M_PI) * (g[i] + 0.044715 * g[i] * g[i] * g[i]);
          a[i] = 0.5 * g[i] * (1.0 + std::tanh(z)) * u[i];
        } else {
          a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
        }
      }
      std::vector<double> d = MatVec(l.w_down, a, c.hidden);
      if (c.has_post_norms) d = RmsNorm(d, l.post_ffn_norm, c.rms_eps);
      for (int i = 0; i < c.hidden; ++i) x[t][i] += d[i];
    }
  }
  const std::vector<float>& head = c.tied_embeddings ? token_embd_ : output_;
  std::vector<std::vector<float>> logits(n);
  for (int t = 0; t < n; ++t) {
    const std::vector<double> h = RmsNorm(x[t], output_norm_, c.rms_eps);
    const std::vector<double> y = MatVec(head, h, c.vocab_size);
    logits[t].assign(y.begin(), y.end());
  }
  return logits;
}

}  // namespace tandem::testing
