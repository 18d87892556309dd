// SPDX-License-Identifier: MIT
// Gamma method of U. Wolff, "Monte Carlo errors with less errors", Comput. Phys. Commun. 156 (2004) 143
// (hep-lat/0306017), with the conventions of its Matlab companion UWerr for the details the paper leaves
// open.
#include "latflow/analysis/gamma.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <optional>
#include <string>

#include "latflow/core/error.hpp"

namespace latflow::analysis {
namespace {

using Replicas = std::vector<std::vector<double>>;

// Direct summation costs O(N) per lag. Once the window search needs more lags than this, one FFT over all
// lags up to max_window (O(N log N)) is cheaper; that matters for slow observables such as the topological
// charge near the continuum, where tau_int ~ 10^3 and W ~ 10^4.
constexpr std::size_t kDirectLags = 128;

// A fluctuation below this many ulps of the data's magnitude is round-off (the data are constant): treating
// it as signal would give rho(t) = 1 for all t and a meaningless tau_int instead of error 0, tau_int 1/2.
constexpr double kRoundoffUlps = 16;

std::string where(const char* who) { return std::string(who) + ": "; }

// Throws unless there is at least one replica, no replica is empty and every value is finite.
void check_replicas(const Replicas& replicas, const char* who) {
  if (replicas.empty()) throw Error(where(who) + "no data (zero replicas)");
  for (std::size_t r = 0; r < replicas.size(); ++r) {
    if (replicas[r].empty()) throw Error(where(who) + "replica " + std::to_string(r) + " is empty");
    for (std::size_t i = 0; i < replicas[r].size(); ++i) {
      if (!std::isfinite(replicas[r][i])) {
        throw NumericalError(where(who) + "non-finite value in replica " + std::to_string(r) + " at index " +
                             std::to_string(i));
      }
    }
  }
}

void check_options(const GammaOptions& opt) {
  if (!(opt.S > 0) || !std::isfinite(opt.S)) {
    throw ConfigError("gamma_method: GammaOptions.S must be a positive number, got " + std::to_string(opt.S));
  }
  if (opt.max_window < -1) {
    throw ConfigError("gamma_method: GammaOptions.max_window must be >= 0 or -1 (automatic), got " +
                      std::to_string(opt.max_window));
  }
}

// Mean over all replicas, Gamma(0) with that mean, and the largest |value| (the scale of round-off).
struct Moments {
  std::size_t n = 0;
  double mean = 0;
  double gamma0 = 0;
  double scale = 0;
};

Moments moments(const Replicas& replicas) {
  Moments m;
  double sum = 0;
  for (const auto& rep : replicas) {
    m.n += rep.size();
    for (double a : rep) {
      sum += a;
      m.scale = std::max(m.scale, std::abs(a));
    }
  }
  const double nd = static_cast<double>(m.n);
  // Second pass corrects the mean's summation error, so that a constant series gives deviations at the level
  // of one ulp rather than N ulps.
  const double first = sum / nd;
  double corr = 0;
  for (const auto& rep : replicas) {
    for (double a : rep) corr += a - first;
  }
  m.mean = first + corr / nd;
  double ss = 0;
  for (const auto& rep : replicas) {
    for (double a : rep) ss += (a - m.mean) * (a - m.mean);
  }
  m.gamma0 = ss / nd;
  return m;
}

bool is_roundoff(double gamma0, double scale) {
  const double floor = kRoundoffUlps * std::numeric_limits<double>::epsilon() * scale;
  return std::sqrt(gamma0) <= floor;
}

// Radix-2 FFT pieces for the autocorrelation |FFT(x)|^2 -> inverse FFT, on split real/imaginary arrays of a
// power-of-two length (GCC moves std::complex<double> halves through the stack, and the store-forwarding
// stalls cost a factor of several). The forward transform is decimation in frequency, which leaves the
// spectrum in bit-reversed order; the power spectrum is pointwise, and the inverse is decimation in time,
// which takes bit-reversed input. So no bit-reversal pass is needed (its random access dominated the run
// time).
//
// Twiddles for the stage of half-length h are exp(+i pi k / h), k < h, stored contiguously at [h, 2h); they
// are evaluated directly (no recurrence), which keeps round-off at O(eps log n).
struct Twiddles {
  std::vector<double> re, im;
  explicit Twiddles(std::size_t n) : re(n), im(n) {
    const std::size_t big = n / 2;
    const double pi = std::acos(-1.0);
    for (std::size_t k = 0; k < big; ++k) {
      re[big + k] = std::cos(pi * static_cast<double>(k) / static_cast<double>(big));
      im[big + k] = std::sin(pi * static_cast<double>(k) / static_cast<double>(big));
    }
    for (std::size_t h = big / 2; h >= 1; h /= 2) {
      for (std::size_t k = 0; k < h; ++k) {
        re[h + k] = re[big + k * (big / h)];
        im[h + k] = im[big + k * (big / h)];
      }
    }
  }
};

// Forward transform (exp(-i ...)), natural order in, bit-reversed order out.
void fft_forward_dif(std::vector<double>& re, std::vector<double>& im, const Twiddles& tw) {
  const std::size_t n = re.size();
  for (std::size_t half = n / 2; half >= 1; half /= 2) {
    for (std::size_t start = 0; start < n; start += 2 * half) {
      for (std::size_t k = 0; k < half; ++k) {
        const std::size_t p = start + k;
        const std::size_t q = p + half;
        const double c = tw.re[half + k];
        const double s = -tw.im[half + k];
        const double dr = re[p] - re[q];
        const double di = im[p] - im[q];
        re[p] += re[q];
        im[p] += im[q];
        re[q] = dr * c - di * s;
        im[q] = dr * s + di * c;
      }
    }
  }
}

// Backward transform (exp(+i ...)), unnormalised, bit-reversed order in, natural order out.
void fft_backward_dit(std::vector<double>& re, std::vector<double>& im, const Twiddles& tw) {
  const std::size_t n = re.size();
  for (std::size_t half = 1; half < n; half *= 2) {
    for (std::size_t start = 0; start < n; start += 2 * half) {
      for (std::size_t k = 0; k < half; ++k) {
        const std::size_t p = start + k;
        const std::size_t q = p + half;
        const double c = tw.re[half + k];
        const double s = tw.im[half + k];
        const double vr = re[q] * c - im[q] * s;
        const double vi = re[q] * s + im[q] * c;
        re[q] = re[p] - vr;
        im[q] = im[p] - vi;
        re[p] += vr;
        im[p] += vi;
      }
    }
  }
}

// Autocovariance Gamma(t) of the fluctuations `dev` (data minus the overall mean), Wolff's replica estimator
// Gamma(t) = sum_r sum_{i < N_r - t} dev_{r,i} dev_{r,i+t} / sum_r max(N_r - t, 0). The denominator equals
// N - R t whenever every replica is longer than t; it stays correct when a user-chosen max_window exceeds the
// shortest replica. Lags are computed on demand, directly or all at once by FFT.
class Autocovariance {
 public:
  Autocovariance(const Replicas& dev, std::size_t max_lag) : dev_(dev), max_lag_(max_lag) {}

  double operator()(std::size_t t) {
    while (gamma_.size() <= t) {
      const std::size_t next = gamma_.size();
      if (next >= kDirectLags && max_lag_ > next) {
        fill_by_fft();
      } else {
        gamma_.push_back(direct(next));
      }
    }
    return gamma_[t];
  }

 private:
  double count(std::size_t t) const {
    double c = 0;
    for (const auto& rep : dev_) c += rep.size() > t ? static_cast<double>(rep.size() - t) : 0.0;
    return c;
  }

  double direct(std::size_t t) const {
    double s = 0;
    for (const auto& rep : dev_) {
      for (std::size_t i = 0; i + t < rep.size(); ++i) s += rep[i] * rep[i + t];
    }
    return s / count(t);
  }

  // Lag sums for t = 0..max_lag_ from |FFT|^2 (Wiener-Khinchin); zero padding to m >= N_r + max_lag makes the
  // circular correlation equal the linear one for all those lags.
  void fill_by_fft() {
    std::vector<double> sums(max_lag_ + 1, 0.0);
    std::optional<Twiddles> tw;  // replicas of similar length share the transform size
    for (const auto& rep : dev_) {
      const std::size_t lags = std::min(max_lag_, rep.size() - 1);
      std::size_t m = 2;
      while (m < rep.size() + lags) m <<= 1;
      if (!tw || tw->re.size() != m) tw.emplace(m);
      std::vector<double> re(m, 0.0), im(m, 0.0);
      std::copy(rep.begin(), rep.end(), re.begin());
      fft_forward_dif(re, im, *tw);
      for (std::size_t k = 0; k < m; ++k) {
        re[k] = re[k] * re[k] + im[k] * im[k];
        im[k] = 0;
      }
      fft_backward_dit(re, im, *tw);
      for (std::size_t t = 0; t <= lags; ++t) sums[t] += re[t] / static_cast<double>(m);
    }
    const std::size_t have = gamma_.size();
    for (std::size_t t = have; t <= max_lag_; ++t) gamma_.push_back(sums[t] / count(t));
  }

  const Replicas& dev_;
  std::size_t max_lag_;
  std::vector<double> gamma_;
};

// Constant series: no fluctuation, so no error and no autocorrelation.
GammaResult constant_series(double mean, std::size_t n) {
  GammaResult res;
  res.mean = mean;
  res.n = static_cast<long>(n);
  res.error = 0;
  res.error_of_error = 0;
  res.tau_int = 0.5;
  res.tau_int_error = 0;
  res.window = 0;
  res.window_found = true;
  res.variance = 0;
  res.rho = {1.0};
  res.tau_int_of_w = {0.5};
  return res;
}

// Automatic windowing: assume rho(t) ~ exp(-t/tau), infer tau from tau_int(W),
// tau_W = S / ln((2 tau_int + 1)/(2 tau_int - 1)), and stop at the first W where the derivative of the
// estimated total error (systematic exp(-W/tau) versus statistical sqrt(W/N)) turns positive:
// g(W) = exp(-W/tau_W) - tau_W / sqrt(W N) < 0. tau_int(W) <= 1/2 means tau_W -> 0 and g(W) < 0: stop.
// Returns (W, whether the criterion was met); W = w_max when it was not.
std::pair<std::size_t, bool> automatic_window(Autocovariance& gamma, std::size_t w_max, double S, double nd) {
  const double g0 = gamma(0);
  double gint = 0;  // tau_int(W) - 1/2 from the uncorrected Gamma, as in Wolff's UWerr
  for (std::size_t w = 1; w <= w_max; ++w) {
    gint += gamma(w) / g0;
    if (gint <= 0) return {w, true};
    const double tau_w = S / std::log((gint + 1) / gint);
    const double g = std::exp(-static_cast<double>(w) / tau_w) - tau_w / std::sqrt(static_cast<double>(w) * nd);
    if (g < 0) return {w, true};
  }
  return {w_max, false};
}

// Primary analysis of one series (possibly the projection of a derived quantity). `scale` is the magnitude of
// the values entering the series, used only to recognise a constant series.
GammaResult analyse(const Replicas& replicas, const GammaOptions& opt, double scale) {
  const Moments mom = moments(replicas);
  const double nd = static_cast<double>(mom.n);
  if (mom.gamma0 == 0 || is_roundoff(mom.gamma0, scale)) return constant_series(mom.mean, mom.n);
  GammaResult res;
  res.mean = mom.mean;
  res.n = static_cast<long>(mom.n);

  std::size_t min_len = replicas[0].size();
  std::size_t max_len = 0;
  for (const auto& rep : replicas) {
    min_len = std::min(min_len, rep.size());
    max_len = std::max(max_len, rep.size());
  }
  // UWerr's default: half the shortest replica. A user-chosen window is only capped where Gamma(t) has no
  // terms.
  const std::size_t w_max = opt.max_window < 0 ? min_len / 2 : std::min<std::size_t>(opt.max_window, max_len - 1);

  Replicas dev(replicas.size());
  for (std::size_t r = 0; r < replicas.size(); ++r) {
    dev[r].resize(replicas[r].size());
    for (std::size_t i = 0; i < replicas[r].size(); ++i) dev[r][i] = replicas[r][i] - mom.mean;
  }
  Autocovariance gamma(dev, w_max);
  auto [window, found] = automatic_window(gamma, w_max, opt.S, nd);

  // Keep rho and tau_int(W) somewhat beyond the window so plots show the plateau (UWerr uses 2W).
  const std::size_t last = found ? std::min(w_max, 2 * window + 20) : w_max;
  std::vector<double> g(last + 1);
  for (std::size_t t = 0; t <= last; ++t) g[t] = gamma(t);

  auto c_f = [&g](std::size_t w) {
    double c = g[0];
    for (std::size_t t = 1; t <= w; ++t) c += 2 * g[t];
    return c;
  };
  double cf = c_f(window);  // C_F(W) = Gamma(0) + 2 sum_{t=1}^{W} Gamma(t)
  if (!(cf > 0)) {
    // Only strongly anticorrelated data get here (sum of rho(t) below -1/2). The naive W = 0 estimate then
    // overestimates the error, which is the safe side; UWerr aborts instead.
    window = 0;
    cf = g[0];
  }
  if (opt.bias_correction) {
    // The fluctuations are measured against the estimated mean, which biases every Gamma(t) by
    // -C_F/N to leading order. Correcting Gamma(t) by +C_F/N turns C_F(W) into C_F (1 + (2W+1)/N), and the
    // corrected Gamma enters rho and tau_int as well.
    const double shift = cf / nd;
    for (double& v : g) v += shift;
    cf = c_f(window);
  }

  res.variance = g[0];
  res.rho.resize(last + 1);
  res.tau_int_of_w.resize(last + 1);
  double tau = 0.5;
  res.rho[0] = 1;
  res.tau_int_of_w[0] = 0.5;
  for (std::size_t t = 1; t <= last; ++t) {
    res.rho[t] = g[t] / g[0];
    tau += res.rho[t];
    res.tau_int_of_w[t] = tau;
  }
  const double w2 = 2 * static_cast<double>(window) + 1;
  res.window = static_cast<long>(window);
  res.window_found = found;
  res.error = std::sqrt(cf / nd);  // sigma_F^2 = C_F / N = 2 tau_int Gamma(0) / N
  res.tau_int = cf / (2 * g[0]);
  // Madras-Sokal estimate quoted by Wolff (eq. 42): (delta tau_int)^2 = 2 (2W + 1) tau_int^2 / N.
  res.tau_int_error = res.tau_int * std::sqrt(2 * w2 / nd);
  // sigma_F is proportional to sqrt(tau_int) at fixed Gamma(0), so delta sigma_F / sigma_F = delta tau_int /
  // (2 tau_int) = sqrt((W + 1/2) / N), the expression UWerr uses.
  res.error_of_error = res.error * std::sqrt(0.5 * w2 / nd);
  return res;
}

}  // namespace

GammaResult gamma_method(const std::vector<std::vector<double>>& replicas, const GammaOptions& opt) {
  check_options(opt);
  check_replicas(replicas, "gamma_method");
  double scale = 0;
  for (const auto& rep : replicas) {
    for (double a : rep) scale = std::max(scale, std::abs(a));
  }
  return analyse(replicas, opt, scale);
}

GammaResult gamma_method(const std::vector<double>& series, const GammaOptions& opt) {
  return gamma_method(Replicas{series}, opt);
}

GammaResult gamma_method_derived(const std::vector<std::vector<std::vector<double>>>& data, const DerivedFn& f,
                                 const GammaOptions& opt) {
  const char* who = "gamma_method_derived";
  check_options(opt);
  if (!f) throw Error(where(who) + "no function given");
  if (data.empty()) throw Error(where(who) + "no observables");
  for (std::size_t alpha = 0; alpha < data.size(); ++alpha) {
    check_replicas(data[alpha], who);
    if (data[alpha].size() != data[0].size()) {
      throw Error(where(who) + "observable " + std::to_string(alpha) + " has " + std::to_string(data[alpha].size()) +
                  " replicas, observable 0 has " + std::to_string(data[0].size()));
    }
    for (std::size_t r = 0; r < data[0].size(); ++r) {
      if (data[alpha][r].size() != data[0][r].size()) {
        throw Error(where(who) + "replica " + std::to_string(r) + " of observable " + std::to_string(alpha) + " has " +
                    std::to_string(data[alpha][r].size()) + " measurements, observable 0 has " +
                    std::to_string(data[0][r].size()));
      }
    }
  }

  const std::size_t k = data.size();
  std::vector<Moments> mom(k);
  std::vector<double> means(k);
  for (std::size_t alpha = 0; alpha < k; ++alpha) {
    mom[alpha] = moments(data[alpha]);
    means[alpha] = mom[alpha].mean;
  }
  const double nd = static_cast<double>(mom[0].n);

  auto eval = [&](const std::vector<double>& a) {
    const double v = f(a);
    if (!std::isfinite(v)) throw NumericalError(where(who) + "the function returned a non-finite value");
    return v;
  };

  // Linearise f around the means. The derivative is taken by central differences with steps
  // h_alpha = sqrt(Gamma_alpha(0) / N), the size of the statistical fluctuation of the mean, so that the
  // truncation error of the difference quotient is far below the statistical error.
  std::vector<double> grad(k, 0.0);
  std::vector<double> shifted = means;
  for (std::size_t alpha = 0; alpha < k; ++alpha) {
    if (is_roundoff(mom[alpha].gamma0, mom[alpha].scale)) continue;  // a constant does not fluctuate
    const double h = std::sqrt(mom[alpha].gamma0 / nd);
    shifted[alpha] = means[alpha] + h;
    const double up = eval(shifted);
    shifted[alpha] = means[alpha] - h;
    const double down = eval(shifted);
    shifted[alpha] = means[alpha];
    grad[alpha] = (up - down) / (2 * h);
  }

  // The projected series a_F = sum_alpha f_alpha a_alpha carries the fluctuations (and autocorrelations) of F
  // to leading order in 1/N.
  const Replicas& layout = data[0];
  Replicas projected(layout.size());
  double scale = 0;
  for (std::size_t r = 0; r < layout.size(); ++r) {
    projected[r].assign(layout[r].size(), 0.0);
    for (std::size_t i = 0; i < layout[r].size(); ++i) {
      double p = 0;
      double mag = 0;
      for (std::size_t alpha = 0; alpha < k; ++alpha) {
        p += grad[alpha] * data[alpha][r][i];
        mag += std::abs(grad[alpha] * data[alpha][r][i]);
      }
      projected[r][i] = p;
      scale = std::max(scale, mag);
    }
  }

  GammaResult res = analyse(projected, opt, scale);
  res.mean = eval(means);
  return res;
}

}  // namespace latflow::analysis
