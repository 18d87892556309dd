// SPDX-License-Identifier: MIT
// Checkpoint files: atomic writes with rotated backups, and loading with fallback to the newest readable backup.
#include "latflow/flows/checkpoint.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>

#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"
#include "latflow/io/h5.hpp"
#include "latflow/io/zip_check.hpp"

namespace latflow {
namespace fs = std::filesystem;

namespace {

const char* kFormat = "latflow-checkpoint-1";

std::string short_what(const std::exception& e) {
  std::string what;
  if (const auto* c = dynamic_cast<const c10::Error*>(&e))
    what = c->what_without_backtrace();
  else
    what = e.what();
  return what.substr(0, what.find('\n')).substr(0, 160);
}

// FNV-1a over tensors' bytes.
struct Fnv {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  void add(const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ULL;
  }
  void add(const torch::Tensor& t) {
    if (!t.defined()) return;
    auto c = t.detach().to(torch::kCPU).contiguous();
    add(c.data_ptr(), c.nbytes());
  }
  std::string hex() const {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
  }
};

std::string model_hash(FlowModel& model) {
  Fnv f;
  for (const auto& p : model->parameters()) f.add(p);
  for (const auto& b : model->buffers()) f.add(b);
  return f.hex();
}

// The Adam state of every parameter, in parameter order (latflow trains with Adam only).
std::string optimizer_hash(torch::optim::Optimizer& opt) {
  Fnv f;
  for (auto& group : opt.param_groups())
    for (auto& p : group.params()) {
      auto it = opt.state().find(c10::guts::to_string(p.unsafeGetTensorImpl()));
      if (it == opt.state().end()) continue;
      if (auto* a = dynamic_cast<torch::optim::AdamParamState*>(it->second.get())) {
        const std::int64_t step = a->step();
        f.add(&step, sizeof step);
        f.add(a->exp_avg());
        f.add(a->exp_avg_sq());
        f.add(a->max_exp_avg_sq());
      }
    }
  return f.hex();
}

// CKPT.1 -> CKPT.2, then CKPT hard-linked as CKPT.1 (copied where links are not supported), so that CKPT itself
// stays in place until the new file is renamed over it.
// Checkpoints this process found unreadable: they are replaced, never rotated into the backups (which would push
// a good backup out).
std::set<std::string>& unreadable() {
  static std::set<std::string> s;
  return s;
}

void rotate_backups(const std::string& path) {
  if (!file_exists(path) || unreadable().count(path)) return;
  std::error_code ec;
  for (int k = kCheckpointBackups - 1; k >= 1; --k) {
    const auto from = checkpoint_backup(path, k), to = checkpoint_backup(path, k + 1);
    if (file_exists(from)) {
      fs::rename(from, to, ec);
      if (ec) throw IoError(to + ": cannot rotate checkpoint backup: " + ec.message());
    }
  }
  const auto first = checkpoint_backup(path, 1);
  fs::remove(first, ec);
  if (::link(path.c_str(), first.c_str()) != 0) {
    fs::copy_file(path, first, fs::copy_options::overwrite_existing, ec);
    if (ec) throw IoError(first + ": cannot keep checkpoint backup: " + ec.message());
  }
}

// Reads one file: IoError if it is unreadable or not a finite latflow checkpoint, ConfigError on an identity
// mismatch.
CheckpointMeta load_one(const std::string& path, FlowModel& model, torch::optim::Optimizer* opt,
                        const std::string& expected_identity) {
  CheckpointMeta meta;
  std::string stored_weights_hash, stored_optimizer_hash;
  try {
    io::verify_zip_archive(path);  // before LibTorch's reader, which crashes on some corrupted archives
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    c10::IValue v;
    if (!archive.try_read("format", v) || !v.isString() || v.toStringRef() != kFormat)
      throw IoError(path + ": not a latflow checkpoint");
    auto read_string = [&](const char* key) {
      if (!archive.try_read(key, v) || !v.isString()) throw IoError(path + ": checkpoint lacks " + key);
      return v.toStringRef();
    };
    meta.model_identity = read_string("model_identity");
    if (archive.try_read("weights_hash", v) && v.isString()) stored_weights_hash = v.toStringRef();
    if (archive.try_read("optimizer_hash", v) && v.isString()) stored_optimizer_hash = v.toStringRef();
    meta.training_identity = read_string("training_identity");
    if (!archive.try_read("step", v) || !v.isInt() || v.toInt() < 0) throw IoError(path + ": checkpoint lacks step");
    meta.step = v.toInt();
    if (!archive.try_read("train_seconds", v) || !v.isDouble())
      throw IoError(path + ": checkpoint lacks train_seconds");
    meta.train_seconds = v.toDouble();
    if (archive.try_read("lr_scale", v)) {
      if (!v.isDouble() || !(v.toDouble() > 0) || !std::isfinite(v.toDouble()))
        throw IoError(path + ": checkpoint has a bad lr_scale");
      meta.lr_scale = v.toDouble();
    }
    // Checkpoints written before the interval sums were stored resume with an empty interval.
    if (archive.try_read("interval_sums", v)) {
      if (!v.isDoubleList() || v.toDoubleVector().size() != 4)
        throw IoError(path + ": checkpoint has bad interval_sums");
      meta.interval_sums = v.toDoubleVector();
      if (!archive.try_read("interval_steps", v) || !v.isInt() || v.toInt() < 0)
        throw IoError(path + ": checkpoint has interval_sums but no interval_steps");
      meta.interval_steps = v.toInt();
    }
    for (const auto& [name, col] : meta.history.columns()) {
      torch::Tensor t;
      if (!archive.try_read(std::string("history_") + name, t, /*is_buffer=*/true) ||
          t.scalar_type() != torch::kFloat64 || t.dim() != 1)
        throw IoError(path + ": checkpoint lacks history_" + name);
      t = t.contiguous();
      *col = std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
    }
    // The architecture must match before tensors are loaded into it.
    auto diff = first_difference(meta.model_identity, expected_identity);
    if (!diff.empty())
      throw ConfigError("checkpoint " + path + " was made with other parameters (" + diff +
                        "); pass --retrain to train from scratch, or set run.checkpoint");
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    model->load(model_archive);
    if (opt) {
      torch::serialize::InputArchive opt_archive;
      archive.read("optimizer", opt_archive);
      opt->load(opt_archive);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw IoError(path + ": unreadable or incompatible checkpoint (" + short_what(e) + ")");
  }
  if (!weights_finite(model)) throw IoError(path + ": checkpoint holds non-finite weights");
  // The zip CRCs are checked above; the stored hashes also catch data that was corrupted before it was written.
  // (Checkpoints written before the hashes existed have none and are accepted as they are.)
  if (!stored_weights_hash.empty() && stored_weights_hash != model_hash(model))
    throw IoError(path + ": checkpoint is corrupted (the weights do not match their stored hash)");
  if (opt && !stored_optimizer_hash.empty() && stored_optimizer_hash != optimizer_hash(*opt))
    throw IoError(path + ": checkpoint is corrupted (the optimizer state does not match its stored hash)");
  return meta;
}

}  // namespace

std::string checkpoint_backup(const std::string& path, int k) { return k == 0 ? path : path + "." + std::to_string(k); }

bool checkpoint_exists(const std::string& path) {
  for (int k = 0; k <= kCheckpointBackups; ++k)
    if (file_exists(checkpoint_backup(path, k))) return true;
  return false;
}

bool weights_finite(FlowModel& model) {
  torch::NoGradGuard no_grad;
  for (const auto& p : model->parameters())
    if (!torch::isfinite(p).all().item<bool>()) return false;
  for (const auto& b : model->buffers())
    if (b.is_floating_point() && !torch::isfinite(b).all().item<bool>()) return false;
  return true;
}

void save_checkpoint(const std::string& path, FlowModel& model, torch::optim::Optimizer* opt,
                     const CheckpointMeta& meta) {
  if (!weights_finite(model)) throw NumericalError(path + ": refusing to write a checkpoint with non-finite weights");
  torch::serialize::OutputArchive archive;
  torch::serialize::OutputArchive model_archive;
  model->save(model_archive);
  archive.write("model", model_archive);
  if (opt) {
    torch::serialize::OutputArchive opt_archive;
    opt->save(opt_archive);
    archive.write("optimizer", opt_archive);
  }
  archive.write("format", c10::IValue(std::string(kFormat)));
  archive.write("model_identity", c10::IValue(meta.model_identity));
  archive.write("training_identity", c10::IValue(meta.training_identity));
  archive.write("step", c10::IValue(meta.step));
  archive.write("train_seconds", c10::IValue(meta.train_seconds));
  archive.write("lr_scale", c10::IValue(meta.lr_scale));
  archive.write("interval_sums", c10::IValue(meta.interval_sums));
  archive.write("interval_steps", c10::IValue(meta.interval_steps));
  auto h = meta.history;
  for (const auto& [name, col] : h.columns())
    archive.write(std::string("history_") + name, torch::tensor(*col, torch::kFloat64), /*is_buffer=*/true);
  archive.write("weights_hash", c10::IValue(model_hash(model)));
  if (opt) archive.write("optimizer_hash", c10::IValue(optimizer_hash(*opt)));
  const std::string tmp = path + ".tmp";
  ensure_parent_dir(path);
  try {
    // Serialised in memory and written by us: LibTorch's file writer throws from a destructor when a write fails
    // (disk full), which terminates the process.
    std::ostringstream bytes;
    archive.save_to(bytes);
    write_file_synced(tmp, bytes.str());
    rotate_backups(path);
    commit_file(tmp, path);
    unreadable().erase(path);
  } catch (const Error& e) {
    std::remove(tmp.c_str());
    throw IoError(path + ": cannot write checkpoint (" + short_what(e) + ")");
  } catch (const std::exception& e) {
    std::remove(tmp.c_str());
    throw IoError(path + ": cannot write checkpoint (" + short_what(e) + ")");
  }
}

CheckpointMeta load_checkpoint(const std::string& path, FlowModel& model, torch::optim::Optimizer* opt,
                               const std::string& expected_identity) {
  if (!checkpoint_exists(path)) throw IoError(path + ": checkpoint not found (run `latflow train` first)");
  std::string first_failure;
  for (int k = 0; k <= kCheckpointBackups; ++k) {
    const auto file = checkpoint_backup(path, k);
    if (!file_exists(file)) continue;
    try {
      auto meta = load_one(file, model, opt, expected_identity);
      if (k > 0)
        log::warn((first_failure.empty() ? path + ": checkpoint missing" : first_failure) + "; using the backup " +
                  file + " (step " + std::to_string(meta.step) + ")");
      return meta;
    } catch (const IoError& e) {
      if (k == 0) unreadable().insert(path);
      if (first_failure.empty()) first_failure = e.what();
    }
  }
  throw IoError(first_failure + (file_exists(checkpoint_backup(path, 1)) ? "; no readable backup either" : ""));
}

void write_model_group(io::File& f, const Config& cfg, const CheckpointMeta& meta, const std::string& hash) {
  const auto& fp = cfg.flow;
  f.create_group("/model");
  f.write_attr("/model", "coupling", choice_name(fp.coupling));
  f.write_attr("/model", "layers", static_cast<std::int64_t>(fp.layers));
  f.write_attr("/model", "hidden", std::vector<std::int64_t>(fp.hidden.begin(), fp.hidden.end()));
  f.write_attr("/model", "kernel", static_cast<std::int64_t>(fp.kernel));
  f.write_attr("/model", "activation", choice_name(fp.activation));
  f.write_attr("/model", "z2", static_cast<std::int64_t>(fp.z2));
  f.write_attr("/model", "spline_bins", static_cast<std::int64_t>(fp.spline_bins));
  f.write_attr("/model", "spline_bound", fp.spline_bound);
  f.write_attr("/model", "prior", choice_name(fp.prior));
  f.write_attr("/model", "ncp_components", static_cast<std::int64_t>(fp.ncp_components));
  f.write_attr("/model", "loops", static_cast<std::int64_t>(fp.loops));
  f.write_attr("/model", "dtype", choice_name(fp.dtype));
  f.write_attr("/model", "weights_hash", hash);
  f.write_attr("/model", "checkpoint", cfg.checkpoint_path());
  f.write_attr("/model", "train_steps", meta.step);
  f.write_attr("/model", "train_seconds", meta.train_seconds);
  auto h = meta.history;
  for (const auto& [name, v] : h.columns())
    f.write("/training/" + std::string(name), *v, {static_cast<std::uint64_t>(v->size())});
}

namespace {
// Parameters only, recursively by module name; shapes must agree (the architecture check makes them).
void load_parameters(torch::nn::Module& m, torch::serialize::InputArchive& a, const std::string& path) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.named_parameters(/*recurse=*/false)) {
    torch::Tensor t;
    a.read(p.key(), t);
    if (!t.sizes().equals(p.value().sizes()))
      throw ConfigError(path + ": parameter " + p.key() + " has another shape than this model's");
    p.value().copy_(t);
  }
  for (auto& c : m.named_children()) {
    torch::serialize::InputArchive child;
    // A stochastic normalizing flow started from a plain flow's checkpoint: its flow blocks stay fresh.
    if (c.key().rfind("block", 0) == 0) {
      if (!a.try_read(c.key(), child)) continue;
    } else {
      a.read(c.key(), child);
    }
    load_parameters(*c.value(), child, path);
  }
}
}  // namespace

CheckpointMeta load_weights_from(const std::string& path, FlowModel& model, const std::string& expected_identity) {
  if (!file_exists(path)) throw IoError(path + ": train.init_from checkpoint not found");
  CheckpointMeta meta;
  try {
    io::verify_zip_archive(path);  // before LibTorch's reader, which crashes on some corrupted archives
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    c10::IValue v;
    archive.read("format", v);
    if (!v.isString() || v.toStringRef() != "latflow-checkpoint-1") throw IoError(path + ": not a latflow checkpoint");
    archive.read("model_identity", v);
    meta.model_identity = v.toStringRef();
    archive.read("step", v);
    meta.step = v.toInt();
    archive.read("train_seconds", v);
    meta.train_seconds = v.toDouble();
    // Only the architecture has to agree: keep the theory and flow.* lines.
    auto architecture = [](const std::string& identity) {
      std::istringstream is(identity);
      std::string out, line;
      while (std::getline(is, line))
        if (line.rfind("theory", 0) == 0 || line.rfind("flow.", 0) == 0) out += line + "\n";
      return out;
    };
    auto diff = first_difference(architecture(meta.model_identity), architecture(expected_identity));
    if (!diff.empty()) throw ConfigError("train.init_from = " + path + ": another architecture (" + diff + ")");
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    load_parameters(*model, model_archive, path);
  } catch (const c10::Error& e) {
    std::string what = e.what_without_backtrace();
    throw IoError(path + ": unreadable checkpoint for train.init_from (" +
                  what.substr(0, what.find('\n')).substr(0, 160) + ")");
  }
  return meta;
}

}  // namespace latflow
