// SPDX-License-Identifier: MIT
// A small RAII C++ layer over the HDF5 C API. This header does not include hdf5.h: only h5*.cpp and h5_detail.hpp do.
// Object paths are absolute ("/", "/proposals/log_w"). Every failure throws latflow::IoError with a one-line
// message naming the file and the object, e.g. "out.h5: dataset /chain/index: not found" (HDF5's own
// error-stack printing is switched off). Files use the default (serial) property lists, so no MPI
// initialisation is needed, except those opened with open_parallel (MPI-IO driver, see there).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace latflow::io {

enum class DType { F64, F32, I64, U8 };

// Rows [row0, row0 + rows) of a dataset's first axis.
struct RowRange {
  std::uint64_t row0 = 0, rows = 0;
};

class File {
 public:
  // New file. If it exists: IoError ("<path>: exists; refusing to overwrite (pass --overwrite)") and the file
  // is left untouched, unless overwrite is true, which truncates it.
  static File create(const std::string& path, bool overwrite);
  static File open_read(const std::string& path);   // IoError naming the file if missing, empty or not HDF5
  static File open_write(const std::string& path);  // existing file, read-write
  // Existing file, read-write, opened by every rank of MPI_COMM_WORLD through the MPI-IO driver (serial
  // open_write when MPI is not running). Collective: every call that changes the file (resize, write_attr,
  // write_rows, flush, and closing it) must be made by all ranks with the same arguments, except the data of
  // write_rows. Parallel HDF5 cannot write variable-length data, so files are created and finished serially.
  static File open_parallel(const std::string& path);

  // Move-only. The destructor closes without throwing, so a close-time error is lost: call flush() first when
  // the caller must know that the data reached the file.
  File(File&&) noexcept;
  File& operator=(File&&) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  const std::string& path() const { return path_; }
  bool exists(const std::string& obj) const;  // group or dataset (intermediate groups need not exist)
  std::vector<std::string> list(const std::string& group) const;  // member names, sorted
  void create_group(const std::string& group);  // creates missing intermediate groups; no-op if it exists

  // Attributes on a group or dataset; writing replaces an existing attribute of the same name. Strings are
  // stored as variable-length UTF-8 (h5py reads str), numbers as IEEE f64 LE / i64 LE, vectors as 1-D
  // attributes. They live in the object header (64 KiB in all): larger arrays belong in datasets. Pass a
  // std::int64_t or a double explicitly: a plain int literal is ambiguous between the two overloads.
  void write_attr(const std::string& obj, const std::string& name, const std::string& value);
  void write_attr(const std::string& obj, const std::string& name, const char* value);
  void write_attr(const std::string& obj, const std::string& name, double value);
  void write_attr(const std::string& obj, const std::string& name, std::int64_t value);
  void write_attr(const std::string& obj, const std::string& name, const std::vector<double>& value);
  void write_attr(const std::string& obj, const std::string& name, const std::vector<std::int64_t>& value);
  bool has_attr(const std::string& obj, const std::string& name) const;
  std::vector<std::string> attr_names(const std::string& obj) const;
  std::string read_attr_string(const std::string& obj, const std::string& name) const;
  double read_attr_double(const std::string& obj, const std::string& name) const;  // also converts integers
  std::int64_t read_attr_int(const std::string& obj, const std::string& name) const;
  std::vector<double> read_attr_doubles(const std::string& obj, const std::string& name) const;
  std::vector<std::int64_t> read_attr_ints(const std::string& obj, const std::string& name) const;

  // Fixed-size datasets, written once (IoError if the dataset exists); missing parent groups are created.
  // write_string: a scalar variable-length UTF-8 string for texts such as the config (no NUL bytes).
  // write: contiguous f64, shape {} = scalar.
  void write_string(const std::string& dset, const std::string& text);
  std::string read_string(const std::string& dset) const;
  void write(const std::string& dset, const std::vector<double>& data, const std::vector<std::uint64_t>& shape);

  // Extendible datasets: shape [rows, row_shape...], first axis unlimited, chunked by chunk_rows rows,
  // deflate (0 = none, else 1..9) with shuffle. append() adds rows at the end; data holds rows *
  // prod(row_shape) elements, C order, and its type must match the dataset's DType (no silent conversion on
  // writes). Each call opens and closes the dataset, so appending whole chunks at a time avoids recompressing
  // a partial chunk on every call.
  void create_extendible(const std::string& dset, DType type, const std::vector<std::uint64_t>& row_shape,
                         std::uint64_t chunk_rows, int deflate = 4);
  void append(const std::string& dset, const double* data, std::uint64_t rows);
  void append(const std::string& dset, const float* data, std::uint64_t rows);
  void append(const std::string& dset, const std::int64_t* data, std::uint64_t rows);
  void append(const std::string& dset, const std::uint8_t* data, std::uint64_t rows);
  void resize(const std::string& dset, std::uint64_t rows);  // shrink or grow the first axis
  // Writes this rank's `ranges` of rows (which must lie inside the dataset: resize first) from `data`, the
  // ranges' rows concatenated in order. With cols = {col0, ncols} only those entries of the second axis are
  // written (data then holds rows x ncols x the rest). On a parallel file the write is collective
  // (H5FD_MPIO_COLLECTIVE, required for compressed datasets): every rank calls it, a rank with nothing to
  // write passes no ranges. The type must match the dataset's.
  void write_rows(const std::string& dset, const std::vector<RowRange>& ranges, DType type, const void* data,
                  RowRange cols = {0, 0});
  std::uint64_t rows(const std::string& dset) const;
  std::vector<std::uint64_t> shape(const std::string& dset) const;  // full shape, rows first
  DType dtype(const std::string& dset) const;

  // Read rows [row0, row0 + nrows) (nrows = -1: to the end), converting to the requested type as HDF5 does.
  // Rows out of range, or a non-numeric dataset, give IoError. A scalar dataset reads as its single row 0.
  std::vector<double> read_f64(const std::string& dset, std::uint64_t row0 = 0, std::int64_t nrows = -1) const;
  std::vector<float> read_f32(const std::string& dset, std::uint64_t row0 = 0, std::int64_t nrows = -1) const;
  std::vector<std::int64_t> read_i64(const std::string& dset, std::uint64_t row0 = 0, std::int64_t nrows = -1) const;
  std::vector<std::uint8_t> read_u8(const std::string& dset, std::uint64_t row0 = 0, std::int64_t nrows = -1) const;

  void flush();  // H5Fflush(H5F_SCOPE_GLOBAL): data written so far reaches the file; IoError on failure

 private:
  File(std::string path, std::int64_t id) : path_(std::move(path)), id_(id) {}
  std::string path_;
  std::int64_t id_ = -1;  // hid_t
  bool parallel_ = false;
};

}  // namespace latflow::io
