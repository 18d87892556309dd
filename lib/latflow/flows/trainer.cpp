// SPDX-License-Identifier: MIT
// Reverse-KL training, checkpoints, and resume: the Trainer of trainer.hpp and its helpers.
#include "latflow/flows/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <limits>
#include <sstream>

#include "latflow/analysis/weights.hpp"
#include "latflow/core/error.hpp"
#include "latflow/core/faults.hpp"
#include "latflow/core/log.hpp"
#include "latflow/core/seed.hpp"
#include "latflow/flows/adam.hpp"
#include "latflow/flows/checkpoint.hpp"
#include "latflow/parallel/mpi.hpp"
#include "latflow/theories/theory.hpp"

namespace latflow {

namespace {

double learning_rate(const TrainParams& t, std::int64_t step) {
  double lr = t.lr;
  if (t.lr_schedule == LrSchedule::cosine && t.steps > t.warmup) {
    double f = static_cast<double>(step - t.warmup) / static_cast<double>(t.steps - t.warmup);
    f = std::clamp(f, 0.0, 1.0);
    lr = t.lr_min + 0.5 * (t.lr - t.lr_min) * (1 + std::cos(M_PI * f));
  }
  if (step < t.warmup) lr *= static_cast<double>(step + 1) / static_cast<double>(t.warmup);
  return lr;
}

// Contiguous CPU float tensors by a plain loop (a step checks ~100 small gradients: tensor ops would cost ~1 ms).
template <class T>
bool finite_values(const torch::Tensor& t) {
  const T* x = t.data_ptr<T>();
  for (std::int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

bool all_finite(const std::vector<torch::Tensor>& ts, bool grads) {
  for (const auto& p : ts) {
    const auto& t = grads ? p.grad() : p;
    if (!t.defined()) continue;
    const bool plain = t.device().is_cpu() && t.is_contiguous();
    if (plain && t.scalar_type() == torch::kFloat32   ? !finite_values<float>(t)
        : plain && t.scalar_type() == torch::kFloat64 ? !finite_values<double>(t)
                                                      : !torch::isfinite(t).all().item<bool>())
      return false;
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
// MPI_Allreduce per step. Returns the summed loss. CPU gradients go through `buffer` (kept between steps) with
// plain loops; other devices through tensor ops. Both round the float64 sums to the parameters' dtype alike.
template <class T>
void copy_grad(const torch::Tensor& p, double* at, bool to_buffer) {
  auto g = p.mutable_grad();
  if (to_buffer) {
    if (!g.defined()) return std::fill(at, at + p.numel(), 0.0);
    const auto c = g.contiguous();
    const T* src = c.data_ptr<T>();
    for (std::int64_t i = 0; i < p.numel(); ++i) at[i] = static_cast<double>(src[i]);
    return;
  }
  if (!g.defined() || !g.is_contiguous()) p.mutable_grad() = g = torch::empty_like(p);
  T* dst = g.data_ptr<T>();
  for (std::int64_t i = 0; i < p.numel(); ++i) dst[i] = static_cast<T>(at[i]);
}

double allreduce_gradients(const std::vector<torch::Tensor>& params, double local_loss, std::vector<double>& buffer) {
  if (mpi::size() == 1) return local_loss;
  bool cpu = true;
  std::int64_t n = 0;
  for (const auto& p : params) {
    cpu = cpu && p.device().is_cpu() && (p.scalar_type() == torch::kFloat32 || p.scalar_type() == torch::kFloat64);
    n += p.numel();
  }
  if (!cpu) {
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
  buffer.resize(n + 1);
  for (bool to_buffer : {true, false}) {
    if (!to_buffer) mpi::allreduce_sum(buffer.data(), n + 1);
    double* at = buffer.data();
    for (const auto& p : params) {
      if (p.scalar_type() == torch::kFloat32)
        copy_grad<float>(p, at, to_buffer);
      else
        copy_grad<double>(p, at, to_buffer);
      at += p.numel();
    }
    if (to_buffer) *at = local_loss;
  }
  return buffer[n];
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

// The first sample of this rank's share [B r / R, B (r + 1) / R) of each batch of B samples over R ranks.
std::int64_t share_begin(const TrainParams& tp, int R, int rank) {
  if (tp.batch < R)
    throw ConfigError("train.batch = " + std::to_string(tp.batch) + ": smaller than the " + std::to_string(R) +
                      " MPI ranks it is split over");
  return tp.batch * rank / R;
}

FlowModel initial_flow(const Config& cfg) {
  // The initial weights come from the run seed (LibTorch's default generator is not seeded reproducibly).
  torch::manual_seed(derive_seed(cfg.run.seed, "init", 0));
  FlowModel model = make_flow(cfg);
  model->to_device(torch::Device(cfg.run.device));
  return model;
}

}  // namespace

Trainer::Trainer(const Config& cfg, PathAction path_action)
    : cfg_(cfg),
      tp_(cfg.train),
      ranks_(mpi::size()),
      rank_(mpi::rank()),
      root_(rank_ == 0),
      lo_(share_begin(cfg.train, ranks_, rank_)),
      hi_(cfg.train.batch * (rank_ + 1) / ranks_),
      theory_(make_theory(cfg)),
      path_action_(std::move(path_action)),
      model_(initial_flow(cfg)),
      opt_(model_->parameters(), torch::optim::AdamOptions(cfg.train.lr)),
      ckpt_(cfg.checkpoint_path()) {
  meta_.model_identity = model_identity(cfg);
  meta_.training_identity = training_identity(cfg);
}

void Trainer::check_training_identity(const CheckpointMeta& stored) const {
  // Reusing a complete checkpoint does not depend on the step count; continuing one does (cosine schedule).
  auto without_steps = [](const std::string& id) {
    const auto at = id.find("train.steps = ");
    return at == std::string::npos ? id : id.substr(0, at) + id.substr(id.find('\n', at) + 1);
  };
  const bool complete = stored.step >= tp_.steps;
  auto diff = complete
                  ? first_difference(without_steps(stored.training_identity), without_steps(meta_.training_identity))
                  : first_difference(stored.training_identity, meta_.training_identity);
  if (!diff.empty())
    throw ConfigError("checkpoint " + ckpt_ + " was made with other parameters (" + diff +
                      "); pass --retrain to train from scratch, or set run.checkpoint");
}

bool Trainer::resume() {
  if (checkpoint_exists(ckpt_) && !tp_.restart) {
    auto stored = load_checkpoint(ckpt_, model_, &opt_, meta_.model_identity);
    check_training_identity(stored);
    meta_.step = stored.step;
    meta_.train_seconds = stored.train_seconds;
    meta_.history = stored.history;
    meta_.lr_scale = stored.lr_scale;
    meta_.interval_sums = stored.interval_sums;
    meta_.interval_steps = stored.interval_steps;
    // Training is complete only with its final evaluation recorded (a kill during that evaluation leaves a
    // checkpoint of the last step without it): otherwise the evaluation is made by finish().
    const bool final_eval_missing =
        tp_.eval_every > 0 && (meta_.history.eval_step.empty() || meta_.history.eval_step.back() != meta_.step);
    if (meta_.step < tp_.steps) {
      log::info("training: resuming " + ckpt_ + " at step " + std::to_string(meta_.step));
    } else if (final_eval_missing) {
      log::info("training: checkpoint " + ckpt_ + " is trained but lacks its final evaluation; evaluating");
    } else {
      log::info("training: checkpoint " + ckpt_ + " is trained (" + std::to_string(meta_.step) + " steps, " +
                log::format_seconds(meta_.train_seconds) + "); reusing it, weights " + model_->weights_hash());
      return true;
    }
  } else if (!tp_.init_from.empty()) {
    const auto source = load_weights_from(tp_.init_from, model_, meta_.model_identity);
    // The source's training is part of what this model cost.
    meta_.train_seconds = source.train_seconds;
    log::info("training: starting from the weights of " + tp_.init_from + " (" + std::to_string(source.step) +
              " steps, " + log::format_seconds(source.train_seconds) + " of training, counted here)");
  }
  return false;
}

void Trainer::begin() {
  params_ = model_->parameters();
  for (const auto& p : params_) n_params_ += p.numel();
  log::info("training: " + std::to_string(n_params_) + " parameters, " + std::to_string(tp_.steps) +
            " steps of batch " + std::to_string(tp_.batch) + ", " + choice_name(tp_.gradient) + " gradient" +
            (path_action_ ? " through " + std::to_string(cfg_.ne.steps) + " non-equilibrium steps with " +
                                std::to_string(model_->num_blocks()) + " flow blocks"
                          : std::string()) +
            ", checkpoint " + ckpt_);
  t0_ = std::chrono::steady_clock::now();
  base_seconds_ = meta_.train_seconds;
  good_state_ = serialize_state(model_, opt_);
  step_ = meta_.step;
  if (!trainable() && step_ < tp_.steps) log::info("training: the model has no parameters; nothing to train");
}

double Trainer::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count() - eval_seconds_;
}

bool Trainer::out_of_time() {
  std::uint8_t out_of_time = tp_.max_minutes > 0 && elapsed() > 60.0 * tp_.max_minutes;
  if (tp_.max_minutes > 0) mpi::broadcast(&out_of_time, 1);
  if (out_of_time)
    log::info("training: wall-clock budget train.max_minutes = " + std::to_string(tp_.max_minutes) +
              " reached at step " + std::to_string(step_));
  return out_of_time;
}

bool Trainer::train_step() {
  const std::int64_t s = step_++;
  const double lr = learning_rate(tp_, s) * meta_.lr_scale;
  for (auto& group : opt_.param_groups()) static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
  auto clock = std::chrono::steady_clock::now();
  auto lap = [&clock](double& into) {
    const auto now = std::chrono::steady_clock::now();
    into += std::chrono::duration<double>(now - clock).count();
    clock = now;
  };
  ++phases_.steps;
  const auto z = draw_batch(model_, cfg_.run.seed, s, lo_, hi_);
  lap(phases_.draw);
  const auto [objective, log_q, S] =
      path_action_ ? path_objective(z, derive_seed(cfg_.run.seed, "ne_train", static_cast<std::uint64_t>(s)))
                   : reverse_kl_objective(*model_, *theory_, z, tp_.gradient == Gradient::path);
  // This rank's part of the batch mean; the allreduce completes it.
  auto loss_part = objective.sum() / static_cast<double>(tp_.batch);
  if (faults::poisoned_loss(s)) loss_part = loss_part * std::numeric_limits<double>::quiet_NaN();
  opt_.zero_grad();
  const double local_loss = loss_part.item<double>();
  if (std::isfinite(local_loss)) loss_part.backward();
  lap(phases_.forward_backward);
  // Every rank sees the same summed loss and gradients, hence takes the same decisions below.
  const double loss = allreduce_gradients(params_, local_loss, grad_buffer_);
  lap(phases_.allreduce);
  if (!std::isfinite(loss) || !all_finite(params_, true)) {
    skip_bad_step();
    return false;
  }
  bad_in_a_row_ = 0;
  rollbacks_in_a_row_ = 0;
  if (tp_.clip > 0) torch::nn::utils::clip_grad_norm_(params_, tp_.clip);
  if (!fused_adam_step(opt_)) opt_.step();
  if (s == faults::nan_weight_step()) {  // tests the guard that keeps non-finite weights out of checkpoints
    torch::NoGradGuard no_grad;
    params_.front().view(-1)[0].fill_(std::numeric_limits<double>::quiet_NaN());
  }
  lap(phases_.update);
  record_batch(loss, -(S + log_q));
  const bool log_now = step_ % tp_.log_every == 0 || step_ == tp_.steps;
  const bool kept = !log_now || close_interval(lr);
  if (kept && (log_now || log::stdout_is_tty())) show_progress(log_now);
  lap(phases_.bookkeeping);
  return kept;
}

// The objective through a protocol: log q(x) + S_0(x) + W for x = f(z), the gradient through x and the weights
// (reparameterised) and through the flow blocks, the updates' outputs held constant.
KLObjective Trainer::path_objective(const torch::Tensor& z, std::uint64_t stream) {
  auto [x, log_q] = model_->forward(z);
  auto xd = x.to(torch::kFloat64);
  auto S = path_action_(*model_, xd, stream, lo_);
  return {log_q + S, log_q.detach(), S.detach()};
}

void Trainer::log_phases() const {
  // Collective: every rank's phases go to the root, which prints rank 0's and the spread of the compute phase.
  const auto& p = phases_;
  const auto all = mpi::gather(std::vector<double>{p.draw, p.forward_backward, p.allreduce, p.update, p.bookkeeping});
  if (!root_ || p.steps == 0) return;
  const double n = static_cast<double>(p.steps);
  double total = 0, slowest = 0, fastest = all[1];
  for (std::size_t i = 0; i < 5; ++i) total += all[i];
  for (std::size_t r = 0; r < all.size() / 5; ++r) {
    slowest = std::max(slowest, all[5 * r + 1]);
    fastest = std::min(fastest, all[5 * r + 1]);
  }
  char b[400];
  std::snprintf(b, sizeof b,
                "training: %.2f ms per step on rank 0 (%lld steps): prior draws %.2f, objective + backward %.2f "
                "(ranks %.2f .. %.2f), gradient allreduce %.2f (including the wait for the slowest rank), "
                "update %.2f, history %.2f",
                1e3 * total / n, static_cast<long long>(p.steps), 1e3 * all[0] / n, 1e3 * all[1] / n, 1e3 * fastest / n,
                1e3 * slowest / n, 1e3 * all[2] / n, 1e3 * all[3] / n, 1e3 * all[4] / n);
  log::info(b);
}

void Trainer::roll_back() {
  restore_state(good_state_, model_, opt_);
  meta_.lr_scale *= 0.5;  // stored in the checkpoint, so a resume after a roll-back continues exactly
}

// A step with a non-finite loss or gradient is skipped: its update is never applied. Persistent failures roll back
// to the last good state with a smaller learning rate, and stop training when roll-backs do not help.
void Trainer::skip_bad_step() {
  constexpr int kMaxRollbacks = 3;
  const std::int64_t s = step_ - 1;
  if (++bad_in_a_row_ < tp_.max_bad_steps) return;
  if (++rollbacks_in_a_row_ > kMaxRollbacks)
    throw NumericalError("training: non-finite loss or gradients at step " + std::to_string(s) + " persist after " +
                         std::to_string(kMaxRollbacks) +
                         " roll-backs with lower learning rates; last good checkpoint " + ckpt_);
  roll_back();
  bad_in_a_row_ = 0;
  log::warn("training: non-finite values at step " + std::to_string(s) + "; rolled back, learning-rate scale now " +
            std::to_string(meta_.lr_scale));
}

// Adds the step to the history interval's running sums: the batch statistics on the root, from the whole batch's
// log-weights (gathered in sample order).
void Trainer::record_batch(double loss, const torch::Tensor& log_weights) {
  auto lw_t = log_weights.to(torch::kCPU).contiguous();
  const std::vector<double> lw =
      mpi::gather(std::vector<double>(lw_t.data_ptr<double>(), lw_t.data_ptr<double>() + lw_t.numel()));
  auto& sums = meta_.interval_sums;  // loss, Kish ESS/N, acceptance estimate, var log w
  if (root_) {
    sums[0] += loss;
    sums[1] += analysis::kish_ess_fraction(lw);
    sums[2] += analysis::imh_acceptance_estimate(lw);
    sums[3] += torch::tensor(lw, torch::kFloat64).var().item<double>();
  }
  ++meta_.interval_steps;
}

// At a logging point: the weights become the new roll-back target and the interval's means a history row; with a
// non-finite weight the model rolls back instead (returns false).
bool Trainer::close_interval(double lr) {
  if (!all_finite(params_, false)) {
    roll_back();
    log::warn("training: non-finite weights after step " + std::to_string(step_ - 1) + "; rolled back");
    return false;
  }
  good_state_ = serialize_state(model_, opt_);
  auto& h = meta_.history;
  auto& sums = meta_.interval_sums;
  h.step.push_back(step_);
  const double n = static_cast<double>(meta_.interval_steps);
  h.loss.push_back(sums[0] / n);
  h.ess.push_back(sums[1] / n);
  h.acceptance.push_back(sums[2] / n);
  h.var_logw.push_back(sums[3] / n);
  h.lr.push_back(lr);
  h.wall_seconds.push_back(base_seconds_ + elapsed());
  sums[0] = sums[1] = sums[2] = sums[3] = 0;
  meta_.interval_steps = 0;
  return true;
}

// A progress bar redrawn in place on a terminal; otherwise a log line at each logging point.
void Trainer::show_progress(bool log_line) {
  std::ostringstream st;
  st << std::fixed << std::setprecision(3);
  const auto& h = meta_.history;
  if (!h.loss.empty()) st << "loss " << h.loss.back() << "  ess " << h.ess.back() << "  acc " << h.acceptance.back();
  if (!log::is_root()) return;
  const double seconds = elapsed();
  const double eta = step_ > 0 ? seconds / step_ * (tp_.steps - step_) : 0;
  std::ostringstream os;
  os << "step " << std::setw(6) << step_ << "/" << tp_.steps << "  " << st.str() << "  " << log::format_seconds(seconds)
     << " (eta " << log::format_seconds(eta) << ")";
  if (log::stdout_is_tty()) {
    const int width = 24, filled = static_cast<int>(width * step_ / std::max<std::int64_t>(tp_.steps, 1));
    std::printf("\r[%s%s] %s\033[K", std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                os.str().c_str());
    std::fflush(stdout);
    if (step_ == tp_.steps) std::printf("\n");
  } else if (log_line) {
    log::info(os.str());
  }
}

std::vector<double> Trainer::evaluation_log_weights() {
  torch::InferenceMode guard;
  std::vector<double> lw;
  // Chunk i of the evaluation sample is made by rank i mod R; a round's gather is in chunk order.
  const std::int64_t chunk = 1000, n_chunks = (tp_.eval_samples + chunk - 1) / chunk;
  for (std::int64_t first = 0; first < n_chunks; first += ranks_) {
    std::vector<double> mine;
    if (const std::int64_t i = first + rank_; i < n_chunks) {
      const auto n = std::min(chunk, tp_.eval_samples - i * chunk);
      auto [x, log_q] =
          model_->sample(n, derive_seed(cfg_.run.seed, "eval", static_cast<std::uint64_t>(step_) * 1000003 + i));
      auto xd = x.to(torch::kFloat64);
      const auto S =
          path_action_
              ? path_action_(*model_, xd, derive_seed(cfg_.run.seed, "ne_eval", static_cast<std::uint64_t>(step_)),
                             i * chunk)
              : theory_->action(xd);
      auto w = (-(S + log_q)).to(torch::kCPU).contiguous();
      mine.assign(w.data_ptr<double>(), w.data_ptr<double>() + n);
    }
    const auto all = mpi::gather(mine);
    lw.insert(lw.end(), all.begin(), all.end());
  }
  return lw;
}

void Trainer::evaluate() {
  // Non-finite weights (a NaN that entered between logging steps) would give NaN log-weights, which the weight
  // statistics refuse: roll back first, as before a checkpoint (every rank alike).
  if (!weights_finite(model_)) {
    roll_back();
    log::warn("training: non-finite weights at step " + std::to_string(step_) + "; rolled back before the evaluation");
  }
  last_eval_step_ = step_;
  const double trained_seconds = base_seconds_ + elapsed();
  const auto te = std::chrono::steady_clock::now();
  const std::vector<double> lw = evaluation_log_weights();
  auto add_eval_time = [&] {
    eval_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
  };
  if (!root_) return add_eval_time();
  auto& h = meta_.history;
  h.eval_step.push_back(step_);
  h.eval_wall_seconds.push_back(trained_seconds);
  h.eval_ess.push_back(analysis::kish_ess_fraction(lw));
  h.eval_acceptance.push_back(analysis::imh_acceptance_estimate(lw));
  add_eval_time();
  std::ostringstream os;
  os << std::fixed << std::setprecision(4) << "eval   step " << step_ << ": Kish ESS/N " << h.eval_ess.back()
     << ", IMH acceptance " << h.eval_acceptance.back() << " on " << tp_.eval_samples << " proposals";
  if (log::stdout_is_tty() && log::is_root()) std::printf("\r\033[K");
  log::info(os.str());
}

void Trainer::checkpoint() {
  // Never a checkpoint with non-finite weights: roll back to the last good state first (every rank alike).
  if (!weights_finite(model_)) {
    roll_back();
    log::warn("training: non-finite weights at step " + std::to_string(step_) + "; rolled back before the checkpoint");
  }
  const std::string hash = model_->weights_hash();
  if (!mpi::all_equal(hash_purpose(hash)))
    throw NumericalError("training: the model weights differ between MPI ranks at step " + std::to_string(step_) +
                         " (this rank: " + hash + ")");
  meta_.step = step_;
  meta_.train_seconds = base_seconds_ + elapsed();
  if (root_) save_checkpoint(ckpt_, model_, &opt_, meta_);
}

TrainSummary Trainer::finish() {
  if (log::stdout_is_tty() && log::is_root()) std::printf("\n");  // ends the progress bar's line
  // The history's evaluations that came with the checkpoint are on every rank, this session's only on the root;
  // last_eval_step_ covers those on every rank.
  const auto& history_evals = meta_.history.eval_step;
  const bool evaluated = last_eval_step_ == step_ || (!history_evals.empty() && history_evals.back() == step_);
  if (tp_.eval_every > 0 && !evaluated) evaluate();
  // The last step's checkpoint is written here, after the final evaluation (a checkpoint of the last step means
  // that training and its evaluation are complete): the loop's checkpoints stop short of train.steps.
  checkpoint();
  log_phases();
  log::info("training: " + std::to_string(step_) + " steps in " + log::format_seconds(meta_.train_seconds) +
            " (this session " + log::format_seconds(elapsed()) + "), weights " + model_->weights_hash() +
            ", checkpoint " + ckpt_);
  return summary(false);
}

TrainSummary Trainer::summary(bool reused) {
  return {meta_.step, meta_.train_seconds, reused, model_->weights_hash(), meta_.history};
}

}  // namespace latflow
