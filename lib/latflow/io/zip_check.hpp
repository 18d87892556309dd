// SPDX-License-Identifier: MIT
// Integrity check of a zip archive (LibTorch's checkpoint container) before LibTorch reads it.
//
// Why: LibTorch 1.13 checks no CRC when it reads an archive, and some corrupted archives (single bit flips in the
// pickled structure, found by the fuzz smoke test) make its reader segfault instead of throwing, so a corrupted
// checkpoint could end a resume with a crash rather than the fall-back to a backup. Verifying every entry's CRC-32
// and the consistency of the zip records first turns such files into a one-line IoError.
#pragma once
#include <string>

namespace latflow::io {

// Throws IoError naming the file and the first problem unless `path` is a complete zip archive whose central
// directory, local headers and every entry's CRC-32 agree (stored or deflated entries; deflated ones are checked
// for their record structure only, since LibTorch writes stored entries). Zip64 records are followed.
void verify_zip_archive(const std::string& path);

}  // namespace latflow::io
