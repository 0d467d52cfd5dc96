#include "server/cluster/cluster_metrics.h"

#include <cstdint>
#include <map>
#include <string_view>

#include "common/str_cat.h"

namespace tandem::server::cluster {
namespace {

namespace v1 = tandem::v1;

void Head(std::string* out, std::string_view name, std::string_view type, std::string_view help) {
  *out += StrCat("# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

template <typename T>
void Line(std::string* out, std::string_view name, std::string_view labels, T value) {
  *out +=
      StrCat(name, labels.empty() ? "" : "{", labels, labels.empty() ? "" : "}", " ", value, "\n");
}

// A metric of one unlabelled series.
template <typename T>
void Single(std::string* out, std::string_view name, std::string_view type, std::string_view help,
            T value) {
  Head(out, name, type, help);
  Line(out, name, "", value);
}

// A label value with \, " and newlines escaped.
std::string Quote(std::string_view v) {
  std::string q = "\"";
  for (char c : v) {
    if (c == '\\' || c == '"') q.push_back('\\');
    if (c == '\n') {
      q += "\\n";
      continue;
    }
    q.push_back(c);
  }
  return q + "\"";
}

const char* RoleName(v1::WorkerRole r) {
  return r == v1::WORKER_ROLE_PREFILL ? "prefill" : r == v1::WORKER_ROLE_DECODE ? "decode" : "?";
}

}  // namespace

std::string RenderRouterMetrics(const RouterEngine& router) {
  std::string out;
  const std::vector<WorkerInfo> workers = router.workers();
  std::map<std::string, int> per_role = {{"prefill", 0}, {"decode", 0}};
  for (const WorkerInfo& w : workers) {
    if (!w.load.draining()) ++per_role[RoleName(w.role)];
  }
  Head(&out, "tandem:cluster_workers", "gauge",
       "Workers registered with this router and not draining, by role.");
  for (const auto& [role, n] : per_role)
    Line(&out, "tandem:cluster_workers", StrCat("role=\"", role, "\""), n);
  Head(&out, "tandem:cluster_worker_info", "gauge",
       "The worker registry: one series per registered worker (value 1).");
  for (const WorkerInfo& w : workers) {
    Line(&out, "tandem:cluster_worker_info",
         StrCat("worker=", Quote(w.name), ",role=\"", RoleName(w.role),
                "\",control=", Quote(w.control_address), ",kv=", Quote(w.kv_address),
                ",draining=\"", w.load.draining() ? "true" : "false", "\""),
         1);
  }
  struct Field {
    const char* name;
    const char* type;
    const char* help;
    double (*get)(const WorkerInfo&);
  };
  const Field fields[] = {
      {"tandem:cluster_worker_running", "gauge",
       "Sequences running on each worker (its last heartbeat).",
       [](const WorkerInfo& w) { return static_cast<double>(w.load.running()); }},
      {"tandem:cluster_worker_waiting", "gauge",
       "Sequences waiting on each worker (its last heartbeat).",
       [](const WorkerInfo& w) { return static_cast<double>(w.load.waiting()); }},
      {"tandem:cluster_worker_kv_usage_ratio", "gauge", "Share of each worker's KV blocks in use.",
       [](const WorkerInfo& w) {
         return w.load.kv_blocks_total() > 0
                    ? 1.0 - static_cast<double>(w.load.kv_blocks_free()) / w.load.kv_blocks_total()
                    : 0.0;
       }},
      {"tandem:cluster_worker_in_flight", "gauge", "Sequences this router has on each worker now.",
       [](const WorkerInfo& w) { return static_cast<double>(w.in_flight); }},
      {"tandem:cluster_worker_slo_judged_total", "counter",
       "Requests that ended (stop or length) with an SLO for each worker's phase: TTFT for a "
       "prefill worker, TPOT for a decode worker.",
       [](const WorkerInfo& w) { return static_cast<double>(w.slo_judged); }},
      {"tandem:cluster_worker_slo_met_total", "counter", "Of those, the requests that met it.",
       [](const WorkerInfo& w) { return static_cast<double>(w.slo_met); }},
  };
  for (const Field& f : fields) {
    Head(&out, f.name, f.type, f.help);
    for (const WorkerInfo& w : workers) {
      Line(&out, f.name, StrCat("worker=", Quote(w.name), ",role=\"", RoleName(w.role), "\""),
           f.get(w));
    }
  }
  Single(&out, "tandem:cluster_workers_dropped_total", "counter",
         "Workers dropped for missing their heartbeats.", router.workers_dropped());
  Single(&out, "tandem:cluster_requests_retried_total", "counter",
         "Sequences tried again on other workers after losing one before their first token.",
         router.retries());
  Single(&out, "tandem:cluster_requests_in_flight", "gauge", "Sequences relayed by the router now.",
         router.in_flight());
  // Prefix-aware placement: what the router predicted against what the workers found.
  const RouterEngine::PrefixCounts prefix = router.prefix_counts();
  Single(&out, "tandem:cluster_prefix_queried_tokens_total", "counter",
         "Prompt tokens of the sequences placed on prefill workers.", prefix.queried);
  Single(&out, "tandem:cluster_prefix_predicted_tokens_total", "counter",
         "Of those, the tokens the chosen worker's prefix cache was predicted to hold.",
         prefix.predicted);
  Single(&out, "tandem:cluster_prefix_hit_tokens_total", "counter",
         "Prompt tokens the prefill workers said their prefix caches gave.", prefix.reported);
  // Attainment per role, workers since dropped included: the prefill role keeps TTFT, the
  // decode role TPOT (the client-side view of both is tandem:slo_attainment_ratio).
  const RouterEngine::Attainment per[] = {router.attainment(v1::WORKER_ROLE_PREFILL),
                                          router.attainment(v1::WORKER_ROLE_DECODE)};
  const char* names[] = {"prefill", "decode"};
  Head(&out, "tandem:cluster_role_slo_judged_total", "counter",
       "Requests that ended (stop or length) with an SLO for the role's phase (prefill: TTFT, "
       "from arrival to the first token; decode: TPOT).");
  for (int i = 0; i < 2; ++i) {
    Line(&out, "tandem:cluster_role_slo_judged_total", StrCat("role=\"", names[i], "\""),
         per[i].judged);
  }
  Head(&out, "tandem:cluster_role_slo_met_total", "counter", "Of those, the requests that met it.");
  for (int i = 0; i < 2; ++i) {
    Line(&out, "tandem:cluster_role_slo_met_total", StrCat("role=\"", names[i], "\""), per[i].met);
  }
  Head(&out, "tandem:cluster_role_slo_attainment_ratio", "gauge",
       "Share of the judged requests that met the role's SLO, since the router started.");
  for (int i = 0; i < 2; ++i) {
    Line(&out, "tandem:cluster_role_slo_attainment_ratio", StrCat("role=\"", names[i], "\""),
         per[i].judged > 0 ? static_cast<double>(per[i].met) / per[i].judged : 0.0);
  }
  return out;
}

std::string RenderPrefillMetrics(const kvcache::KvPusherStats& p) {
  std::string out;
  Head(&out, "tandem:kv_pushes_total", "counter",
       "KV transfers this prefill worker pushed to decode workers, by outcome (cancelled: a "
       "layer-wise push whose sequence then ended at its first token, e.g. at EOS).");
  Line(&out, "tandem:kv_pushes_total", "outcome=\"committed\"", p.committed);
  Line(&out, "tandem:kv_pushes_total", "outcome=\"failed\"", p.failed);
  Line(&out, "tandem:kv_pushes_total", "outcome=\"cancelled\"", p.cancelled);
  Single(&out, "tandem:kv_push_bytes_total", "counter", "KV frame bytes written to decode workers.",
         p.bytes);
  Single(&out, "tandem:kv_push_seconds_total", "counter",
         "Time from each committed push's start (Reserve) to its commit written.", p.seconds);
  Single(&out, "tandem:kv_push_reserve_retries_total", "counter",
         "Reserves refused by a decode worker with no room, tried again.", p.reserve_retries);
  return out;
}

std::string RenderDecodeMetrics(const kvcache::KvReceiverStats& t, int open_transfers,
                                const scheduler::KvArrivals& arrivals) {
  std::string out;
  Head(&out, "tandem:kv_transfers_total", "counter",
       "KV transfers received by this decode worker, by outcome (refused: no room or a bad "
       "layout at Reserve).");
  Line(&out, "tandem:kv_transfers_total", "outcome=\"committed\"", t.committed);
  Line(&out, "tandem:kv_transfers_total", "outcome=\"aborted\"", t.aborted);
  Line(&out, "tandem:kv_transfers_total", "outcome=\"refused\"", t.refused);
  Single(&out, "tandem:kv_transfer_bytes_total", "counter", "KV frame bytes received.", t.bytes);
  Single(&out, "tandem:kv_transfer_refused_peers_total", "counter",
         "KV connections ended for lack of the cluster secret (or from off-host without one).",
         t.refused_peers);
  Single(&out, "tandem:kv_transfers_open", "gauge", "KV transfers reserved and not yet committed.",
         open_transfers);
  Single(&out, "tandem:kv_arrivals_unpaired", "gauge",
         "Requests waiting for their KV, and committed KV waiting for its request.",
         arrivals.num_waiting());
  return out;
}

}  // namespace tandem::server::cluster
