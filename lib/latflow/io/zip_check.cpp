// SPDX-License-Identifier: MIT
// Zip records as in PKWARE's APPNOTE.TXT (sections 4.3.7 local file header, 4.3.12 central directory header,
// 4.3.14-4.3.16 end of central directory and its zip64 forms, 4.5.3 zip64 extended information).
#include "latflow/io/zip_check.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <vector>

#include "latflow/core/error.hpp"

namespace latflow::io {
namespace {

std::uint32_t crc32(const unsigned char* p, std::size_t n) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// Little-endian fields of the file held in memory; a read past the end is a corrupt archive.
struct Bytes {
  const std::vector<unsigned char>& b;
  const std::string& path;
  [[noreturn]] void fail(const std::string& what) const {
    throw IoError(path + ": checkpoint is corrupted (zip archive: " + what + ")");
  }
  std::uint64_t get(std::uint64_t at, int n) const {
    if (at > b.size() || b.size() - at < static_cast<std::uint64_t>(n)) fail("a record runs past the end of the file");
    std::uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = v << 8 | b[at + i];
    return v;
  }
};

struct Directory {
  std::uint64_t entries, offset, size;
};

Directory find_directory(const Bytes& f) {
  const std::uint64_t n = f.b.size();
  if (n < 22) f.fail("too short for a zip archive");
  // The end-of-central-directory record: the last signature within the maximal comment length of the end.
  std::uint64_t eocd = n - 22;
  while (f.get(eocd, 4) != 0x06054b50) {
    if (eocd == 0 || n - eocd > 22 + 0xFFFF) f.fail("no end-of-central-directory record");
    --eocd;
  }
  Directory d{f.get(eocd + 10, 2), f.get(eocd + 16, 4), f.get(eocd + 12, 4)};
  if (eocd >= 20 && f.get(eocd - 20, 4) == 0x07064b50) {  // zip64 locator, then the zip64 record
    const std::uint64_t rec = f.get(eocd - 20 + 8, 8);
    if (f.get(rec, 4) != 0x06064b50) f.fail("bad zip64 end-of-central-directory record");
    d = {f.get(rec + 32, 8), f.get(rec + 48, 8), f.get(rec + 40, 8)};
  }
  if (d.offset > n || d.size > n - d.offset) f.fail("the central directory lies outside the file");
  return d;
}

}  // namespace

void verify_zip_archive(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open");
  const std::vector<unsigned char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const Bytes f{data, path};
  const Directory d = find_directory(f);
  std::uint64_t at = d.offset;
  for (std::uint64_t e = 0; e < d.entries; ++e) {
    if (f.get(at, 4) != 0x02014b50) f.fail("bad central directory entry " + std::to_string(e));
    const auto method = f.get(at + 10, 2), crc = f.get(at + 16, 4);
    std::uint64_t csize = f.get(at + 20, 4), usize = f.get(at + 24, 4), local = f.get(at + 42, 4);
    const auto name_len = f.get(at + 28, 2), extra_len = f.get(at + 30, 2), comment_len = f.get(at + 32, 2);
    f.get(at + 46, static_cast<int>(std::min<std::uint64_t>(name_len, 8)));  // (bounds of the name's start)
    if (name_len > 0) f.get(at + 46 + name_len - 1, 1);
    const std::string name(reinterpret_cast<const char*>(data.data() + at + 46), name_len);
    // Zip64: the fields that overflowed 32 bits follow, in this order, in extra field 0x0001.
    for (std::uint64_t x = at + 46 + name_len, end = x + extra_len; x + 4 <= end;) {
      const auto id = f.get(x, 2), len = f.get(x + 2, 2);
      std::uint64_t y = x + 4;
      if (id == 0x0001) {
        if (usize == 0xFFFFFFFFu) usize = f.get(y, 8), y += 8;
        if (csize == 0xFFFFFFFFu) csize = f.get(y, 8), y += 8;
        if (local == 0xFFFFFFFFu) local = f.get(y, 8), y += 8;
      }
      x += 4 + len;
    }
    if (f.get(local, 4) != 0x04034b50) f.fail("entry " + name + ": bad local header");
    if (f.get(local + 26, 2) != name_len) f.fail("entry " + name + ": local and central names differ");
    const std::uint64_t start = local + 30 + name_len + f.get(local + 28, 2);
    if (start > data.size() || csize > data.size() - start) f.fail("entry " + name + ": data past the end of the file");
    if (method == 0) {
      if (csize != usize) f.fail("entry " + name + ": stored sizes differ");
      if (crc32(data.data() + start, static_cast<std::size_t>(csize)) != crc)
        f.fail("entry " + name + ": CRC-32 mismatch");
    } else if (method != 8) {
      f.fail("entry " + name + ": unknown compression method " + std::to_string(method));
    }
    at += 46 + name_len + extra_len + comment_len;
  }
  if (at != d.offset + d.size) f.fail("the central directory's size does not match its entries");
}

}  // namespace latflow::io
