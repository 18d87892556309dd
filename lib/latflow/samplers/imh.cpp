// SPDX-License-Identifier: MIT
// Independence Metropolis (IMH) over flow proposals, treated as data (DESIGN.md decision 4).
//
// Proposals are made in blocks; block b draws its prior noise from the stream (seed, "propose", b), and IMH step i
// decides with the counter-based uniform of (seed, "accept", i). Blocks are dealt round-robin to the MPI ranks;
// the root receives each block's log-weights, observables and fields in block order and runs the serial
// accept/reject sequence. Hence the ensemble does not depend on the number of ranks.
#include <torch/torch.h>

#include <chrono>
#include <cmath>

#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"
#include "latflow/core/provenance.hpp"
#include "latflow/core/seed.hpp"
#include "latflow/flows/checkpoint.hpp"
#include "latflow/io/ensemble.hpp"
#include "latflow/jobs.hpp"
#include "latflow/parallel/mpi.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {
namespace {

// Per-block results, flattened to doubles for MPI: [block, n, log_q(n), S(n), scalars(n*k), corr(n*L0), x(n*V)].
std::vector<double> make_block(FlowModel& model, const Theory& theory, const Config& cfg, std::int64_t b) {
  const std::int64_t n = std::min(cfg.sample.block, cfg.sample.proposals - b * cfg.sample.block);
  auto [x, log_q] = model->sample(n, derive_seed(cfg.run.seed, "propose", static_cast<std::uint64_t>(b)));
  auto xd = x.to(torch::kCPU, torch::kFloat64).contiguous();  // exact for float32 fields
  auto S = theory.action(xd);
  auto m = theory.measure(xd);
  std::vector<double> out{static_cast<double>(b), static_cast<double>(n)};
  for (const auto& t : {log_q.to(torch::kCPU), S, m.scalars, m.correlator, xd}) {
    auto c = t.contiguous();
    out.insert(out.end(), c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  }
  return out;
}

void write_model_info(io::File& f, const Config& cfg, const CheckpointMeta& meta, const std::string& hash) {
  const auto& fp = cfg.flow;
  f.create_group("/model");
  f.write_attr("/model", "coupling", fp.coupling);
  f.write_attr("/model", "layers", static_cast<std::int64_t>(fp.layers));
  f.write_attr("/model", "hidden", std::vector<std::int64_t>(fp.hidden.begin(), fp.hidden.end()));
  f.write_attr("/model", "kernel", static_cast<std::int64_t>(fp.kernel));
  f.write_attr("/model", "activation", fp.activation);
  f.write_attr("/model", "z2", static_cast<std::int64_t>(fp.z2));
  f.write_attr("/model", "spline_bins", static_cast<std::int64_t>(fp.spline_bins));
  f.write_attr("/model", "spline_bound", fp.spline_bound);
  f.write_attr("/model", "ncp_components", static_cast<std::int64_t>(fp.ncp_components));
  f.write_attr("/model", "loops", static_cast<std::int64_t>(fp.loops));
  f.write_attr("/model", "dtype", fp.dtype);
  f.write_attr("/model", "weights_hash", hash);
  f.write_attr("/model", "checkpoint", cfg.checkpoint_path());
  f.write_attr("/model", "train_steps", meta.step);
  f.write_attr("/model", "train_seconds", meta.train_seconds);
  auto h = meta.history;
  for (const auto& [name, v] : h.columns())
    f.write("/training/" + std::string(name), *v, {static_cast<std::uint64_t>(v->size())});
}

}  // namespace

std::string sample_job(const Config& cfg, const std::string& command_line) {
  const std::string& out = cfg.run.output;
  if (file_exists(out) && !cfg.run.overwrite)
    throw IoError(out + ": exists; refusing to overwrite (pass --overwrite or set run.output)");
  torch::set_num_threads(cfg.run.threads);
  const auto theory_ptr = make_theory(cfg);
  const Theory& theory = *theory_ptr;
  FlowModel model = make_flow(cfg);
  auto meta = load_checkpoint(cfg.checkpoint_path(), model, nullptr, model_identity(cfg));
  model->to_device(torch::Device(cfg.run.device));
  model->eval();
  const std::string hash = model->weights_hash();
  torch::InferenceMode inference;

  const std::int64_t N = cfg.sample.proposals, nb = (N + cfg.sample.block - 1) / cfg.sample.block;
  const auto field_dims = theory.field_shape();
  std::int64_t V = 1;  // numbers per configuration
  for (auto e : field_dims) V *= e;
  const std::int64_t L0 = cfg.lattice.extents[0];
  const auto& names = theory.observable_names();
  const std::int64_t k = static_cast<std::int64_t>(names.size());
  const bool root = mpi::rank() == 0;
  const int R = mpi::size();

  std::optional<io::File> f;
  const std::string partial = out + ".partial";
  const std::uint64_t chunk = static_cast<std::uint64_t>(cfg.sample.block);
  std::vector<std::uint64_t> field_shape(field_dims.begin(), field_dims.end());
  const bool f32 = cfg.flow.dtype == "float32";
  if (root) {
    ensure_parent_dir(out);
    f = io::File::create(partial, true);
    io::write_header(*f, cfg, Provenance::collect(command_line), "imh");
    io::write_references(*f, cfg);
    write_model_info(*f, cfg, meta, hash);
    for (const char* d : {"/proposals/log_q", "/proposals/action", "/proposals/log_w"})
      f->create_extendible(d, io::DType::F64, {}, chunk);
    for (const auto& name : names) f->create_extendible("/proposals/observables/" + name, io::DType::F64, {}, chunk);
    f->create_extendible("/proposals/observables/correlator", io::DType::F64, {static_cast<std::uint64_t>(L0)}, chunk);
    f->create_extendible("/chain/proposal", io::DType::I64, {}, chunk);
    f->create_extendible("/chain/config", io::DType::I64, {}, chunk);
    f->create_extendible("/chain/accepted", io::DType::U8, {}, chunk);
    f->create_extendible("/configs/field", f32 ? io::DType::F32 : io::DType::F64, field_shape, 64);
    f->create_extendible("/configs/proposal", io::DType::I64, {}, 64);
    f->write_attr("/proposals/observables", "names", [&] {
      std::string s;
      for (const auto& n : names) s += (s.empty() ? "" : " ") + n;
      return s;
    }());
  }
  log::info("sampling: " + std::to_string(N) + " proposals in " + std::to_string(nb) + " blocks on " +
            std::to_string(R) + " rank(s), model " + hash);

  // Chain state (root only).
  double cur_lw = 0;
  std::int64_t cur_prop = -1, cur_cfg = -1, n_stored = 0, n_acc = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::int64_t round = 0; round * R < nb; ++round) {
    const std::int64_t b = round * R + mpi::rank();
    std::vector<double> mine = b < nb ? make_block(model, theory, cfg, b) : std::vector<double>{};
    std::vector<double> all = mpi::gather(mine);
    if (!root) continue;
    std::size_t pos = 0;
    while (pos < all.size()) {
      const auto blk = static_cast<std::int64_t>(all[pos]), n = static_cast<std::int64_t>(all[pos + 1]);
      const double* log_q = &all[pos + 2];
      const double* S = log_q + n;
      const double* sc = S + n;
      const double* corr = sc + n * k;
      const double* x = corr + n * L0;
      pos += 2 + n * (2 + k + L0 + V);
      std::vector<double> lw(n), col(n);
      for (std::int64_t i = 0; i < n; ++i) lw[i] = -S[i] - log_q[i];
      f->append("/proposals/log_q", log_q, n);
      f->append("/proposals/action", S, n);
      f->append("/proposals/log_w", lw.data(), n);
      for (std::int64_t j = 0; j < k; ++j) {
        for (std::int64_t i = 0; i < n; ++i) col[i] = sc[i * k + j];
        f->append("/proposals/observables/" + names[j], col.data(), n);
      }
      f->append("/proposals/observables/correlator", corr, n);

      std::vector<std::int64_t> trail(n), trail_cfg(n), stored_prop;
      std::vector<std::uint8_t> acc(n);
      std::vector<double> stored_x;
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t p = blk * cfg.sample.block + i;
        // Step 0 starts the chain at the first proposal; later steps accept with min(1, w'/w).
        bool accept = p == 0;
        if (!accept) {
          const double u = uniform01(derive_seed(cfg.run.seed, "accept", static_cast<std::uint64_t>(p)));
          accept = std::log(u) < lw[i] - cur_lw;
        }
        if (accept) {
          cur_lw = lw[i];
          cur_prop = p;
          ++n_acc;
          if (cfg.sample.store_configs) {
            cur_cfg = n_stored++;
            stored_prop.push_back(p);
            stored_x.insert(stored_x.end(), x + i * V, x + (i + 1) * V);
          }
        }
        trail[i] = cur_prop;
        trail_cfg[i] = cur_cfg;
        acc[i] = accept;
      }
      f->append("/chain/proposal", trail.data(), n);
      f->append("/chain/config", trail_cfg.data(), n);
      f->append("/chain/accepted", acc.data(), n);
      const auto ns = static_cast<std::uint64_t>(stored_prop.size());
      if (ns) {
        f->append("/configs/proposal", stored_prop.data(), ns);
        if (f32) {
          std::vector<float> xf(stored_x.begin(), stored_x.end());
          f->append("/configs/field", xf.data(), ns);
        } else {
          f->append("/configs/field", stored_x.data(), ns);
        }
      }
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (root) {
    f->write_attr("/chain", "acceptance", static_cast<double>(n_acc - 1) / std::max<std::int64_t>(N - 1, 1));
    f->write_attr("/chain", "sampling_seconds", seconds);
    f->write_attr("/chain", "proposals_per_second", N / seconds);
    f->write_attr("/", "finished", iso_time_utc());
    f->write_attr("/", "status", "complete");
    f->flush();
    f.reset();
    commit_file(partial, out);
    log::info("sampling: " + std::to_string(N) + " proposals in " + log::format_seconds(seconds) + " (" +
              std::to_string(static_cast<long>(N / seconds)) + "/s), wrote " + out);
  }
  mpi::barrier();
  return out;
}

}  // namespace latflow
