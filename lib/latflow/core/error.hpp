// SPDX-License-Identifier: MIT
// Typed exceptions. Every user-facing failure is one of these; apps/main.cpp catches them once and prints a
// single line "latflow: error: <what>" before exiting non-zero (MPI_Abort under MPI).
#pragma once
#include <stdexcept>
#include <string>

namespace latflow {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Bad user input: unknown key, wrong type, out-of-range value. The message names the key and the value.
struct ConfigError : Error {
  using Error::Error;
};
// File problems: missing, unreadable, corrupt, exists and must not be overwritten. The message names the file.
struct IoError : Error {
  using Error::Error;
};
// NaN/Inf or other numerical breakdown that could not be recovered from.
struct NumericalError : Error {
  using Error::Error;
};

}  // namespace latflow
