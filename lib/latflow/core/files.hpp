// SPDX-License-Identifier: MIT
// File helpers shared by the checkpoint and ensemble writers (defined in flows/trainer.cpp), torch-free.
#pragma once
#include <string>

namespace latflow {

bool file_exists(const std::string& path);
// Creates the directory that will hold `path` if it is missing; IoError naming it if that fails.
void ensure_parent_dir(const std::string& path);
// Durable rename: fsync the file, rename over the target, fsync the directory.
void commit_file(const std::string& tmp, const std::string& path);

}  // namespace latflow
