// SPDX-License-Identifier: MIT
#include "latflow/kernels/simd.hpp"

#include <stdexcept>
#include <string>

namespace latflow::pconv {

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::best:
    case Isa::baseline: return true;
#ifdef LATFLOW_X86_ISAS
    case Isa::x86_64_v3: return __builtin_cpu_supports("x86-64-v3");
    case Isa::x86_64_v4: return __builtin_cpu_supports("x86-64-v4");
#endif
    default: return false;
  }
}

Isa resolve(Isa isa) {
  if (isa == Isa::best) {
    static const Isa best = isa_supported(Isa::x86_64_v4)   ? Isa::x86_64_v4
                            : isa_supported(Isa::x86_64_v3) ? Isa::x86_64_v3
                                                            : Isa::baseline;
    return best;
  }
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("kernel instruction set ") + isa_name(isa) +
                                ": not supported by this CPU or build");
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::best: return "best";
    case Isa::baseline: return "baseline";
    case Isa::x86_64_v3: return "x86-64-v3";
    case Isa::x86_64_v4: return "x86-64-v4";
  }
  return "?";
}

}  // namespace latflow::pconv
