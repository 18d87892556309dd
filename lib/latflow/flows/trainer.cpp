// SPDX-License-Identifier: MIT
// Reverse-KL training, checkpoints, and resume.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <sstream>

#include "latflow/analysis/weights.hpp"
#include "latflow/core/error.hpp"
#include "latflow/core/log.hpp"
#include "latflow/core/seed.hpp"
#include "latflow/flows/checkpoint.hpp"
#include "latflow/jobs.hpp"
#include "latflow/parallel/mpi.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {
namespace fs = std::filesystem;

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
    a.read(c.key(), child);
    load_parameters(*c.value(), child, path);
  }
}
}  // namespace

CheckpointMeta load_weights_from(const std::string& path, FlowModel& model, const std::string& expected_identity) {
  if (!file_exists(path)) throw IoError(path + ": train.init_from checkpoint not found");
  CheckpointMeta meta;
  try {
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
    if (!diff.empty())
      throw ConfigError("train.init_from = " + path + ": another architecture (" + diff + ")");
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

namespace {

double learning_rate(const TrainParams& t, std::int64_t step) {
  double lr = t.lr;
  if (t.lr_schedule == "cosine" && t.steps > t.warmup) {
    double f = static_cast<double>(step - t.warmup) / static_cast<double>(t.steps - t.warmup);
    f = std::clamp(f, 0.0, 1.0);
    lr = t.lr_min + 0.5 * (t.lr - t.lr_min) * (1 + std::cos(M_PI * f));
  }
  if (step < t.warmup) lr *= static_cast<double>(step + 1) / static_cast<double>(t.warmup);
  return lr;
}

bool all_finite(const std::vector<torch::Tensor>& ts, bool grads) {
  for (const auto& p : ts) {
    const auto& t = grads ? p.grad() : p;
    if (t.defined() && !torch::isfinite(t).all().item<bool>()) return false;
  }
  return true;
}

std::string serialize_state(FlowModel& model, torch::optim::Optimizer& opt) {
  torch::serialize::OutputArchive a, m, o;
  model->save(m);
  opt.save(o);
  a.write("model", m);
  a.write("optimizer", o);
  std::ostringstream os;
  a.save_to(os);
  return os.str();
}

void restore_state(const std::string& blob, FlowModel& model, torch::optim::Optimizer& opt) {
  torch::serialize::InputArchive a, m, o;
  std::istringstream is(blob);
  a.load_from(is);
  a.read("model", m);
  a.read("optimizer", o);
  model->load(m);
  opt.load(o);
}

// The training batch of one step, split over the ranks. Sample i of step s draws its prior noise from the
// stream (seed, "train", s, i), so rank r's share [B r / R, B (r + 1) / R) is the same data whatever R is.
torch::Tensor draw_batch(FlowModel& model, std::uint64_t seed, std::int64_t step, std::int64_t lo, std::int64_t hi) {
  const std::uint64_t step_seed = derive_seed(seed, "train", static_cast<std::uint64_t>(step));
  std::vector<torch::Tensor> z;
  for (std::int64_t i = lo; i < hi; ++i) z.push_back(model->draw_prior(1, derive_seed(step_seed, "sample", i)));
  return torch::cat(z);
}

// Sums the gradients (and the loss, appended) over the ranks in one flattened float64 buffer: one
// MPI_Allreduce per step. Returns the summed loss.
double allreduce_gradients(const std::vector<torch::Tensor>& params, double local_loss) {
  if (mpi::size() == 1) return local_loss;
  std::vector<torch::Tensor> flat;
  for (const auto& p : params)
    flat.push_back(p.grad().defined() ? p.grad().detach().reshape(-1).to(torch::kCPU, torch::kFloat64)
                                      : torch::zeros({p.numel()}, torch::kFloat64));
  flat.push_back(torch::tensor({local_loss}, torch::kFloat64));
  auto buf = torch::cat(flat).contiguous();
  mpi::allreduce_sum(buf.data_ptr<double>(), buf.numel());
  std::int64_t at = 0;
  for (const auto& p : params) {
    auto g = buf.slice(0, at, at + p.numel()).view(p.sizes()).to(p.options());
    if (p.grad().defined())
      p.mutable_grad().copy_(g);
    else
      p.mutable_grad() = g;
    at += p.numel();
  }
  return buf[at].item<double>();
}

// For its lifetime the weights do not require gradients: what is computed from them is differentiable in its
// other inputs only (the path gradient's log q at fixed weights). Restored before any backward pass.
class WeightsHeldConstant {
 public:
  explicit WeightsHeldConstant(const std::vector<torch::Tensor>& params) : params_(params) {
    for (auto& p : params_) {
      required_.push_back(p.requires_grad());
      p.requires_grad_(false);
    }
  }
  ~WeightsHeldConstant() {
    for (std::size_t i = 0; i < params_.size(); ++i) params_[i].requires_grad_(required_[i]);
  }
  WeightsHeldConstant(const WeightsHeldConstant&) = delete;
  WeightsHeldConstant& operator=(const WeightsHeldConstant&) = delete;

 private:
  std::vector<torch::Tensor> params_;
  std::vector<bool> required_;
};

}  // namespace

KLObjective reverse_kl_objective(FlowModelImpl& model, const Theory& theory, const torch::Tensor& z, bool path) {
  auto [x, log_q] = model.forward(z);
  auto S = theory.action(x.to(torch::kFloat64));
  auto objective = log_q + S;
  if (path) {
    std::vector<torch::Tensor> params = model.parameters();
    WeightsHeldConstant constant(params);
    objective = model.log_prob(x).first + S;
  }
  return {objective, log_q.detach(), S.detach()};
}

namespace {

class Progress {
 public:
  Progress(std::int64_t total) : total_(total), tty_(log::stdout_is_tty()) {}
  void update(std::int64_t step, double elapsed, const std::string& stats, bool log_line) {
    if (!log::is_root()) return;
    const double eta = step > 0 ? elapsed / step * (total_ - step) : 0;
    std::ostringstream os;
    os << "step " << std::setw(6) << step << "/" << total_ << "  " << stats << "  " << log::format_seconds(elapsed)
       << " (eta " << log::format_seconds(eta) << ")";
    if (tty_) {
      const int width = 24, filled = static_cast<int>(width * step / std::max<std::int64_t>(total_, 1));
      std::printf("\r[%s%s] %s\033[K", std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                  os.str().c_str());
      std::fflush(stdout);
      if (step == total_) std::printf("\n");
    } else if (log_line) {
      log::info(os.str());
    }
  }
  void finish() {
    if (tty_ && log::is_root()) std::printf("\n");
  }

 private:
  std::int64_t total_;
  bool tty_;
};

}  // namespace

TrainSummary train_job(const Config& cfg) {
  // Non-equilibrium sampling starts from the flow of the protocol's start physics: that is what is trained.
  if (cfg.ne.steps > 0) return train_job(ne_stage(cfg, 0));
  torch::set_num_threads(cfg.run.threads);
  const auto& tp = cfg.train;
  // Data-parallel over the MPI ranks: every rank holds the whole model, makes its share of the batch, and the
  // gradients are summed with one MPI_Allreduce per step, so the ranks apply the same update and stay identical
  // (checked by a weight hash at every checkpoint). Only the root writes checkpoints and prints.
  const int R = mpi::size(), rank = mpi::rank();
  const bool root = rank == 0;
  if (tp.batch < R)
    throw ConfigError("train.batch = " + std::to_string(tp.batch) + ": smaller than the " + std::to_string(R) +
                      " MPI ranks it is split over");
  const std::int64_t lo = tp.batch * rank / R, hi = tp.batch * (rank + 1) / R;
  const auto theory_ptr = make_theory(cfg);
  const Theory& theory = *theory_ptr;
  // The initial weights come from the run seed (LibTorch's default generator is not seeded reproducibly).
  torch::manual_seed(derive_seed(cfg.run.seed, "init", 0));
  FlowModel model = make_flow(cfg);
  model->to_device(torch::Device(cfg.run.device));
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(tp.lr));

  const std::string ckpt = cfg.checkpoint_path();
  CheckpointMeta meta;
  meta.model_identity = model_identity(cfg);
  meta.training_identity = training_identity(cfg);
  if (checkpoint_exists(ckpt) && !tp.restart) {
    auto stored = load_checkpoint(ckpt, model, &opt, meta.model_identity);
    // Reusing a complete checkpoint does not depend on the step count; continuing one does (cosine schedule).
    auto without_steps = [](const std::string& id) {
      const auto at = id.find("train.steps = ");
      return at == std::string::npos ? id : id.substr(0, at) + id.substr(id.find('\n', at) + 1);
    };
    const bool complete = stored.step >= tp.steps;
    auto diff = complete ? first_difference(without_steps(stored.training_identity), without_steps(meta.training_identity))
                         : first_difference(stored.training_identity, meta.training_identity);
    if (!diff.empty())
      throw ConfigError("checkpoint " + ckpt + " was made with other parameters (" + diff +
                        "); pass --retrain to train from scratch, or set run.checkpoint");
    meta.step = stored.step;
    meta.train_seconds = stored.train_seconds;
    meta.history = stored.history;
    meta.lr_scale = stored.lr_scale;
    meta.interval_sums = stored.interval_sums;
    meta.interval_steps = stored.interval_steps;
    // Training is complete only with its final evaluation recorded (a kill during that evaluation leaves a
    // checkpoint of the last step without it): otherwise fall through, and the evaluation below is made.
    const bool final_eval_missing = tp.eval_every > 0 && (meta.history.eval_step.empty() ||
                                                          meta.history.eval_step.back() != meta.step);
    if (meta.step < tp.steps) {
      log::info("training: resuming " + ckpt + " at step " + std::to_string(meta.step));
    } else if (final_eval_missing) {
      log::info("training: checkpoint " + ckpt + " is trained but lacks its final evaluation; evaluating");
    } else {
      log::info("training: checkpoint " + ckpt + " is trained (" + std::to_string(meta.step) + " steps, " +
                log::format_seconds(meta.train_seconds) + "); reusing it, weights " + model->weights_hash());
      return {meta.step, meta.train_seconds, true, model->weights_hash(), meta.history};
    }
  } else if (!tp.init_from.empty()) {
    const auto source = load_weights_from(tp.init_from, model, meta.model_identity);
    // The source's training is part of what this model cost.
    meta.train_seconds = source.train_seconds;
    log::info("training: starting from the weights of " + tp.init_from + " (" + std::to_string(source.step) +
              " steps, " + log::format_seconds(source.train_seconds) + " of training, counted here)");
  }

  const auto params = model->parameters();
  const bool path_gradient = tp.gradient == "path";
  std::int64_t n_params = 0;
  for (const auto& p : params) n_params += p.numel();
  log::info("training: " + std::to_string(n_params) + " parameters, " + std::to_string(tp.steps) +
            " steps of batch " + std::to_string(tp.batch) + ", " + tp.gradient + " gradient, checkpoint " + ckpt);

  const auto t0 = std::chrono::steady_clock::now();
  const double base_seconds = meta.train_seconds;
  double eval_seconds = 0;  // evaluations are not training: the clock excludes them
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - eval_seconds;
  };
  // The step of this session's last evaluation, on every rank (the history is kept by the root only, so it
  // cannot decide for the others whether the final evaluation is due: a collective that all ranks must join).
  std::int64_t last_eval_step = -1;
  auto evaluate = [&](std::int64_t step) {
    last_eval_step = step;
    const double trained_seconds = base_seconds + elapsed();
    const auto te = std::chrono::steady_clock::now();
    std::vector<double> lw;
    {
      torch::InferenceMode guard;
      // Chunk i of the evaluation sample is made by rank i mod R; a round's gather is in chunk order.
      const std::int64_t chunk = 1000, n_chunks = (tp.eval_samples + chunk - 1) / chunk;
      for (std::int64_t first = 0; first < n_chunks; first += R) {
        std::vector<double> mine;
        if (const std::int64_t i = first + rank; i < n_chunks) {
          const auto n = std::min(chunk, tp.eval_samples - i * chunk);
          auto [x, log_q] =
              model->sample(n, derive_seed(cfg.run.seed, "eval", static_cast<std::uint64_t>(step) * 1000003 + i));
          auto w = (-(theory.action(x.to(torch::kFloat64)) + log_q)).to(torch::kCPU).contiguous();
          mine.assign(w.data_ptr<double>(), w.data_ptr<double>() + n);
        }
        const auto all = mpi::gather(mine);
        lw.insert(lw.end(), all.begin(), all.end());
      }
    }
    if (!root) {
      eval_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
      return;
    }
    auto& h = meta.history;
    h.eval_step.push_back(step);
    h.eval_wall_seconds.push_back(trained_seconds);
    h.eval_ess.push_back(analysis::kish_ess_fraction(lw));
    h.eval_acceptance.push_back(analysis::imh_acceptance_estimate(lw));
    eval_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
    std::ostringstream os;
    os << std::fixed << std::setprecision(4) << "eval   step " << step << ": Kish ESS/N " << h.eval_ess.back()
       << ", IMH acceptance " << h.eval_acceptance.back() << " on " << tp.eval_samples << " proposals";
    if (log::stdout_is_tty() && log::is_root()) std::printf("\r\033[K");
    log::info(os.str());
  };
  Progress progress(tp.steps);
  std::string good_state = serialize_state(model, opt);
  double& lr_scale = meta.lr_scale;  // stored in the checkpoint, so a resume after a roll-back continues exactly
  std::int64_t bad_in_a_row = 0;
  int rollbacks_in_a_row = 0;  // without a good step in between
  constexpr int kMaxRollbacks = 3;
  // Interval accumulators for the history, kept in the checkpoint's metadata.
  double& acc_loss = meta.interval_sums[0];
  double& acc_ess = meta.interval_sums[1];
  double& acc_acc = meta.interval_sums[2];
  double& acc_var = meta.interval_sums[3];
  std::int64_t& acc_n = meta.interval_steps;

  bool saved_now = false;  // the state is in the checkpoint already (no second save of the same step)
  auto checkpoint = [&](std::int64_t step) {
    // Never a checkpoint with non-finite weights: roll back to the last good state first (every rank alike).
    if (!weights_finite(model)) {
      restore_state(good_state, model, opt);
      lr_scale *= 0.5;
      log::warn("training: non-finite weights at step " + std::to_string(step) + "; rolled back before the checkpoint");
    }
    const std::string hash = model->weights_hash();
    if (!mpi::all_equal(hash_purpose(hash)))
      throw NumericalError("training: the model weights differ between MPI ranks at step " + std::to_string(step) +
                           " (this rank: " + hash + ")");
    meta.step = step;
    meta.train_seconds = base_seconds + elapsed();
    if (root) save_checkpoint(ckpt, model, &opt, meta);
    saved_now = true;
  };

  // Fault injection for tests: LATFLOW_FAULT_NAN_STEPS="a,b-c" poisons the loss of those steps with NaN.
  std::vector<std::pair<std::int64_t, std::int64_t>> poisoned;
  if (const char* env = std::getenv("LATFLOW_FAULT_NAN_STEPS")) {
    std::istringstream is(env);
    std::string item;
    while (std::getline(is, item, ',')) {
      auto dash = item.find('-');
      const auto a = std::stoll(item.substr(0, dash));
      poisoned.emplace_back(a, dash == std::string::npos ? a : std::stoll(item.substr(dash + 1)));
    }
  }
  auto is_poisoned = [&](std::int64_t s) {
    return std::any_of(poisoned.begin(), poisoned.end(), [s](auto r) { return s >= r.first && s <= r.second; });
  };
  // LATFLOW_FAULT_NAN_WEIGHT_STEP=s: a weight becomes NaN right after the update of step s (tests the guard that
  // keeps non-finite weights out of checkpoints).
  const char* nan_weight_env = std::getenv("LATFLOW_FAULT_NAN_WEIGHT_STEP");
  const std::int64_t nan_weight_step = nan_weight_env ? std::stoll(nan_weight_env) : -1;

  std::int64_t step = meta.step;
  // A model without parameters (flow.layers = 0 with a fixed prior) has nothing to train: it is checkpointed as it is.
  if (n_params == 0 && step < tp.steps) log::info("training: the model has no parameters; nothing to train");
  for (; step < tp.steps && n_params > 0; ++step) {
    saved_now = false;
    // The root's clock decides for all ranks, which must stop at the same step.
    std::uint8_t out_of_time = tp.max_minutes > 0 && elapsed() > 60.0 * tp.max_minutes;
    if (tp.max_minutes > 0) mpi::broadcast(&out_of_time, 1);
    if (out_of_time) {
      log::info("training: wall-clock budget train.max_minutes = " + std::to_string(tp.max_minutes) +
                " reached at step " + std::to_string(step));
      break;
    }
    const double lr = learning_rate(tp, step) * lr_scale;
    for (auto& group : opt.param_groups()) static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);

    const auto [objective, log_q, S] =
        reverse_kl_objective(*model, theory, draw_batch(model, cfg.run.seed, step, lo, hi), path_gradient);
    // This rank's part of the batch mean; the allreduce completes it.
    auto loss_part = objective.sum() / static_cast<double>(tp.batch);
    if (is_poisoned(step)) loss_part = loss_part * std::numeric_limits<double>::quiet_NaN();
    opt.zero_grad();
    const double local_loss = loss_part.item<double>();
    if (std::isfinite(local_loss)) loss_part.backward();
    // Every rank sees the same summed loss and gradients, hence takes the same decisions below.
    const double loss_value = allreduce_gradients(params, local_loss);
    bool ok = std::isfinite(loss_value) && all_finite(params, true);
    if (!ok) {
      // Skip the step: its update is never applied. Persistent failures roll back to the last good state with a
      // smaller learning rate.
      if (++bad_in_a_row >= tp.max_bad_steps) {
        if (++rollbacks_in_a_row > kMaxRollbacks)
          throw NumericalError("training: non-finite loss or gradients at step " + std::to_string(step) +
                               " persist after " + std::to_string(kMaxRollbacks) +
                               " roll-backs with lower learning rates; last good checkpoint " + ckpt);
        restore_state(good_state, model, opt);
        lr_scale *= 0.5;
        bad_in_a_row = 0;
        log::warn("training: non-finite values at step " + std::to_string(step) +
                  "; rolled back, learning-rate scale now " + std::to_string(lr_scale));
      }
      continue;
    }
    bad_in_a_row = 0;
    rollbacks_in_a_row = 0;
    if (tp.clip > 0) torch::nn::utils::clip_grad_norm_(params, tp.clip);
    opt.step();
    if (step == nan_weight_step) {
      torch::NoGradGuard no_grad;
      params.front().view(-1)[0].fill_(std::numeric_limits<double>::quiet_NaN());
    }

    // The batch statistics of the history, on the root from the whole batch's log-weights (in sample order).
    auto lw_t = (-(S + log_q)).to(torch::kCPU).contiguous();
    const std::vector<double> lw =
        mpi::gather(std::vector<double>(lw_t.data_ptr<double>(), lw_t.data_ptr<double>() + lw_t.numel()));
    if (root) {
      acc_loss += loss_value;
      acc_ess += analysis::kish_ess_fraction(lw);
      acc_acc += analysis::imh_acceptance_estimate(lw);
      acc_var += torch::tensor(lw, torch::kFloat64).var().item<double>();
    }
    ++acc_n;

    const bool log_now = (step + 1) % tp.log_every == 0 || step + 1 == tp.steps;
    if (log_now) {
      if (!all_finite(params, false)) {
        restore_state(good_state, model, opt);
        lr_scale *= 0.5;
        log::warn("training: non-finite weights after step " + std::to_string(step) + "; rolled back");
        continue;
      }
      good_state = serialize_state(model, opt);
      auto& h = meta.history;
      h.step.push_back(step + 1);
      const double n = static_cast<double>(acc_n);
      h.loss.push_back(acc_loss / n);
      h.ess.push_back(acc_ess / n);
      h.acceptance.push_back(acc_acc / n);
      h.var_logw.push_back(acc_var / n);
      h.lr.push_back(lr);
      h.wall_seconds.push_back(base_seconds + elapsed());
      acc_loss = acc_ess = acc_acc = acc_var = 0;
      acc_n = 0;
    }
    if (log_now || log::stdout_is_tty()) {
      std::ostringstream st;
      st << std::fixed << std::setprecision(3);
      if (!meta.history.loss.empty())
        st << "loss " << meta.history.loss.back() << "  ess " << meta.history.ess.back() << "  acc "
           << meta.history.acceptance.back();
      progress.update(step + 1, elapsed(), st.str(), log_now);
    }
    if (tp.eval_every > 0 && (step + 1) % tp.eval_every == 0) evaluate(step + 1);
    // The last step's checkpoint waits for the final evaluation below (a checkpoint of the last step means
    // that training and its evaluation are complete).
    if ((step + 1) % tp.checkpoint_every == 0 && step + 1 < tp.steps) checkpoint(step + 1);
  }
  progress.finish();
  // The history's evaluations that came with the checkpoint are on every rank, this session's only on the root;
  // last_eval_step covers those on every rank.
  const auto& history_evals = meta.history.eval_step;
  const bool evaluated = last_eval_step == step || (!history_evals.empty() && history_evals.back() == step);
  if (tp.eval_every > 0 && !evaluated) {
    evaluate(step);
    saved_now = false;
  }
  if (!saved_now) checkpoint(step);
  const std::string hash = model->weights_hash();
  log::info("training: " + std::to_string(step) + " steps in " + log::format_seconds(meta.train_seconds) +
            " (this session " + log::format_seconds(elapsed()) + "), weights " + hash + ", checkpoint " + ckpt);
  return {meta.step, meta.train_seconds, false, hash, meta.history};
}

}  // namespace latflow
