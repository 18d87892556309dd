// SPDX-License-Identifier: MIT
#include "latflow/io/durable.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "latflow/core/error.hpp"

namespace latflow {
namespace fs = std::filesystem;

bool file_exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

void ensure_parent_dir(const std::string& path) {
  auto dir = fs::path(path).parent_path();
  std::error_code ec;
  if (!dir.empty()) fs::create_directories(dir, ec);
  if (ec) throw IoError(dir.string() + ": cannot create directory for " + path + " (" + ec.message() + ")");
}

void fsync_parent_dir(const std::string& path) {
  const auto dir = fs::path(path).parent_path();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd < 0) return;  // not openable (permissions): the rename itself has happened
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  // Some file systems do not support fsync on directories (EINVAL); an I/O error is a real failure.
  if (rc != 0 && err != EINVAL && err != EROFS)
    throw IoError(path + ": cannot fsync its directory (" + std::strerror(err) + ")");
}

void commit_file(const std::string& tmp, const std::string& path) {
  const int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd < 0 || ::fsync(fd) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    throw IoError(tmp + ": cannot fsync (" + std::strerror(err) + ")");
  }
  ::close(fd);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw IoError(path + ": cannot rename " + tmp + " into place: " + ec.message());
  fsync_parent_dir(path);
}

void write_file_synced(const std::string& path, const std::string& bytes, const std::string& label) {
  const std::string name = label.empty() ? path : label;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError(name + ": cannot write (" + std::strerror(errno) + ")");
  std::size_t done = 0;
  int err = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : ENOSPC;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    std::remove(path.c_str());
    throw IoError(name + ": cannot write (" + std::strerror(err) + ")");
  }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  ensure_parent_dir(path);
  write_file_synced(tmp, bytes, path);
  try {
    commit_file(tmp, path);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

void refuse_existing_output(const std::string& out, const std::string& partial, bool resume, bool overwrite) {
  if (resume || overwrite) return;
  if (file_exists(out)) throw IoError(out + ": exists; refusing to overwrite (pass --overwrite or set run.output)");
  if (file_exists(partial))
    throw IoError(partial +
                  ": an interrupted run's ensemble; pass --resume to continue it or --overwrite to "
                  "start afresh");
}

}  // namespace latflow
