// SPDX-License-Identifier: MIT
// Derived random streams. Every random number in latflow comes from a stream keyed by (run seed, purpose,
// global index) -- never by MPI rank, thread or device -- so results are identical however the work is split,
// and a restart regenerates exactly the numbers an uninterrupted run would have used.
#pragma once
#include <cstdint>
#include <string_view>

namespace latflow {

// SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mixer with full avalanche.
constexpr std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// FNV-1a of a purpose string such as "propose" or "train".
constexpr std::uint64_t hash_purpose(std::string_view s) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  return h;
}

constexpr std::uint64_t derive_seed(std::uint64_t seed, std::string_view purpose, std::uint64_t index) {
  return mix64(mix64(mix64(seed) ^ hash_purpose(purpose)) ^ mix64(index + 0x632be59bd9b4e019ULL));
}

// A counter-based uniform in [0, 1) with 53 random bits: the accept/reject decision of IMH step i uses
// uniform01(derive_seed(seed, "accept", i)), so the chain needs no generator state to resume.
constexpr double uniform01(std::uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

// A sequential stream for samplers that consume a variable number of uniforms (rejection sampling): SplitMix64
// (Steele, Lea, Flood 2014), state advanced by the golden-ratio increment and finalised by mix64.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    const std::uint64_t z = mix64(state_);
    state_ += 0x9e3779b97f4a7c15ULL;
    return z;
  }
  double uniform() { return uniform01(next()); }  // [0, 1)

 private:
  std::uint64_t state_;
};

}  // namespace latflow
