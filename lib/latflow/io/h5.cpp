// SPDX-License-Identifier: MIT
// The File member functions of the HDF5 wrapper. hdf5.h is included only here, in h5_detail.cpp and in the private
// h5_detail.hpp (the helpers both use: handles, errors, type mapping, generic reads and writes; see there for the
// conventions). MPI is needed only for open_parallel and the collective writes of write_rows.
#include "latflow/io/h5.hpp"

#include <hdf5.h>
#include <mpi.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <system_error>
#include <utility>

#include "latflow/core/error.hpp"
#include "latflow/io/h5_detail.hpp"

namespace latflow::io {

using namespace detail;

namespace {

herr_t collect_link(hid_t, const char* name, const H5L_info_t*, void* out) {
  try {
    static_cast<std::vector<std::string>*>(out)->emplace_back(name);
  } catch (...) {
    return -1;  // exceptions must not cross the C library
  }
  return 0;
}

herr_t collect_attr(hid_t, const char* name, const H5A_info_t*, void* out) {
  try {
    static_cast<std::vector<std::string>*>(out)->emplace_back(name);
  } catch (...) {
    return -1;
  }
  return 0;
}

// Hint for the most common open failure on clusters: HDF5 1.10 locks files, and some parallel file systems do
// not support locking at all.
std::string lock_hint(const std::string& cause) {
  if (cause.find("lock") == std::string::npos) return cause;
  return cause +
         "; is the file open for writing in another process? On file systems without locking set "
         "HDF5_USE_FILE_LOCKING=FALSE";
}

hid_t open_existing(const std::string& path, unsigned flags) {
  silence_hdf5();
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec && st.type() != fs::file_type::not_found) raise(path, "", "cannot access (" + ec.message() + ")");
  if (!fs::exists(st)) raise(path, "", "no such file");
  if (fs::is_directory(st)) raise(path, "", "is a directory, not an HDF5 file");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 == 0) raise(path, "", "not an HDF5 file or unreadable");
  if (is_hdf5 < 0) raise(path, "", lock_hint(with_detail("not an HDF5 file or unreadable")));
  const hid_t id = H5Fopen(path.c_str(), flags, H5P_DEFAULT);
  if (id < 0) {
    raise(path, "", lock_hint(with_detail(flags == H5F_ACC_RDWR ? "cannot open for writing" : "cannot open")));
  }
  return id;
}

}  // namespace

File File::create(const std::string& path, bool overwrite) {
  silence_hdf5();
  // EXCL fails without touching an existing file, so there is no check-then-create race.
  const hid_t id = H5Fcreate(path.c_str(), overwrite ? H5F_ACC_TRUNC : H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
  if (id < 0) {
    const std::string cause = with_detail(overwrite ? "cannot create or truncate" : "cannot create");
    std::error_code ec;
    if (!overwrite && std::filesystem::exists(path, ec)) {
      raise(path, "", "exists; refusing to overwrite (pass --overwrite)");
    }
    raise(path, "", lock_hint(cause));
  }
  return File(path, id);
}

File File::open_read(const std::string& path) { return File(path, open_existing(path, H5F_ACC_RDONLY)); }
File File::open_write(const std::string& path) { return File(path, open_existing(path, H5F_ACC_RDWR)); }

File File::open_parallel(const std::string& path) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (!init || fin) return open_write(path);
  silence_hdf5();
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  if (!fapl.valid() || H5Pset_fapl_mpio(fapl.get(), MPI_COMM_WORLD, MPI_INFO_NULL) < 0)
    raise(path, "", with_detail("cannot set up the MPI-IO driver"));
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl.get());
  if (id < 0) raise(path, "", lock_hint(with_detail("cannot open for parallel writing")));
  File f(path, id);
  f.parallel_ = true;
  return f;
}

File::File(File&& other) noexcept
    : path_(std::move(other.path_)), id_(std::exchange(other.id_, -1)), parallel_(other.parallel_) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (id_ >= 0) H5Fclose(id_);
    path_ = std::move(other.path_);
    id_ = std::exchange(other.id_, -1);
    parallel_ = other.parallel_;
  }
  return *this;
}

File::~File() {
  // Errors here cannot be reported; callers that must know the data is on disk call flush() first.
  // Closing a parallel file is collective: while an exception unwinds on one rank the others are not there to
  // close it with us, and the process is on its way to MPI_Abort. Leave it; the committed data is on disk.
  if (parallel_ && std::uncaught_exceptions() > 0) return;
  if (id_ >= 0) H5Fclose(id_);
}

bool File::exists(const std::string& obj) const { return object_exists(live(id_, path_), obj); }

std::vector<std::string> File::list(const std::string& group) const {
  Handle g = open_object(live(id_, path_), path_, group, Kind::kGroup);
  std::vector<std::string> names;
  if (H5Literate(g.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_link, &names) < 0) {
    raise(path_, "group " + group, with_detail("cannot list members"));
  }
  std::sort(names.begin(), names.end());
  return names;
}

void File::create_group(const std::string& group) {
  const hid_t fid = live(id_, path_);
  if (object_exists(fid, group)) {
    open_object(fid, path_, group, Kind::kGroup);  // throws if it is a dataset
    return;
  }
  const std::string label = "group " + group;
  check_parents(fid, path_, label, group);
  Handle lcpl = make_parents_lcpl(path_, label);
  Handle g(H5Gcreate2(fid, group.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  if (!g.valid()) raise(path_, label, with_detail("cannot create"));
}

void File::write_attr(const std::string& obj, const std::string& name, const std::string& value) {
  const hid_t fid = live(id_, path_);
  // A variable-length string ends at the first NUL; refuse rather than truncate silently.
  if (value.find('\0') != std::string::npos) raise(path_, attr_label(obj, name), "string contains a NUL byte");
  Handle type = make_vlen_utf8(path_, attr_label(obj, name));
  const char* p = value.c_str();
  write_attr_impl(fid, path_, obj, name, type.get(), type.get(), {}, &p);
}

void File::write_attr(const std::string& obj, const std::string& name, const char* value) {
  if (value == nullptr) raise(path_, attr_label(obj, name), "null string");
  write_attr(obj, name, std::string(value));
}

void File::write_attr(const std::string& obj, const std::string& name, double value) {
  write_attr_impl(live(id_, path_), path_, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {}, &value);
}

void File::write_attr(const std::string& obj, const std::string& name, std::int64_t value) {
  write_attr_impl(live(id_, path_), path_, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, {}, &value);
}

void File::write_attr(const std::string& obj, const std::string& name, const std::vector<double>& value) {
  write_attr_impl(live(id_, path_), path_, obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {value.size()},
                  value.empty() ? nullptr : value.data());
}

void File::write_attr(const std::string& obj, const std::string& name, const std::vector<std::int64_t>& value) {
  write_attr_impl(live(id_, path_), path_, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, {value.size()},
                  value.empty() ? nullptr : value.data());
}

bool File::has_attr(const std::string& obj, const std::string& name) const {
  Handle o = open_object(live(id_, path_), path_, obj, Kind::kAny);
  const htri_t ex = H5Aexists(o.get(), name.c_str());
  if (ex < 0) raise(path_, attr_label(obj, name), with_detail("cannot look up"));
  return ex > 0;
}

std::vector<std::string> File::attr_names(const std::string& obj) const {
  Handle o = open_object(live(id_, path_), path_, obj, Kind::kAny);
  std::vector<std::string> names;
  if (H5Aiterate2(o.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attr, &names) < 0) {
    raise(path_, "object " + obj, with_detail("cannot list attributes"));
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string File::read_attr_string(const std::string& obj, const std::string& name) const {
  OpenAttr a = open_attr(live(id_, path_), path_, obj, name);
  return read_one_string(Source{a.attr.get(), true}, path_, attr_label(obj, name));
}

double File::read_attr_double(const std::string& obj, const std::string& name) const {
  OpenAttr a = open_attr(live(id_, path_), path_, obj, name);
  return read_one_numeric<double>(Source{a.attr.get(), true}, H5T_NATIVE_DOUBLE, false, path_, attr_label(obj, name));
}

std::int64_t File::read_attr_int(const std::string& obj, const std::string& name) const {
  OpenAttr a = open_attr(live(id_, path_), path_, obj, name);
  return read_one_numeric<std::int64_t>(Source{a.attr.get(), true}, H5T_NATIVE_INT64, true, path_,
                                        attr_label(obj, name));
}

std::vector<double> File::read_attr_doubles(const std::string& obj, const std::string& name) const {
  OpenAttr a = open_attr(live(id_, path_), path_, obj, name);
  return read_all_numeric<double>(Source{a.attr.get(), true}, H5T_NATIVE_DOUBLE, false, path_, attr_label(obj, name));
}

std::vector<std::int64_t> File::read_attr_ints(const std::string& obj, const std::string& name) const {
  OpenAttr a = open_attr(live(id_, path_), path_, obj, name);
  return read_all_numeric<std::int64_t>(Source{a.attr.get(), true}, H5T_NATIVE_INT64, true, path_,
                                        attr_label(obj, name));
}

void File::write_string(const std::string& dset, const std::string& text) {
  const hid_t fid = live(id_, path_);
  if (text.find('\0') != std::string::npos) raise(path_, dataset_label(dset), "string contains a NUL byte");
  Handle type = make_vlen_utf8(path_, dataset_label(dset));
  const char* p = text.c_str();
  create_written_dataset(fid, path_, dset, type.get(), type.get(), {}, &p);
}

std::string File::read_string(const std::string& dset) const {
  Handle d = open_object(live(id_, path_), path_, dset, Kind::kDataset);
  return read_one_string(Source{d.get(), false}, path_, dataset_label(dset));
}

void File::write(const std::string& dset, const std::vector<double>& data, const std::vector<std::uint64_t>& shape) {
  const hid_t fid = live(id_, path_);
  const std::vector<hsize_t> dims(shape.begin(), shape.end());
  const hsize_t n = product(dims, 0);
  if (n != data.size()) {
    raise(path_, dataset_label(dset),
          "shape " + shape_str(dims) + " holds " + std::to_string(n) + " values but " + std::to_string(data.size()) +
              " were given");
  }
  create_written_dataset(fid, path_, dset, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, dims,
                         data.empty() ? nullptr : data.data());
}

void File::create_extendible(const std::string& dset, DType type, const std::vector<std::uint64_t>& row_shape,
                             std::uint64_t chunk_rows, int deflate) {
  const hid_t fid = live(id_, path_);
  const std::string label = dataset_label(dset);
  if (chunk_rows == 0) raise(path_, label, "chunk_rows must be positive");
  if (deflate < 0 || deflate > 9) raise(path_, label, "deflate level " + std::to_string(deflate) + " not in 0..9");
  std::vector<hsize_t> dims{0};
  std::vector<hsize_t> maxdims{H5S_UNLIMITED};
  std::vector<hsize_t> chunk{chunk_rows};
  double chunk_bytes = static_cast<double>(chunk_rows) * static_cast<double>(type_size(type));
  for (const std::uint64_t extent : row_shape) {
    // HDF5 cannot chunk a zero extent; a row of no values is always a caller bug.
    if (extent == 0)
      raise(path_, label, "row shape " + shape_str({row_shape.begin(), row_shape.end()}) + " has a zero extent");
    dims.push_back(extent);
    maxdims.push_back(extent);
    chunk.push_back(extent);
    chunk_bytes *= static_cast<double>(extent);
  }
  // HDF5 limits a chunk to 4 GiB; say so here rather than through an obscure library error.
  if (chunk_bytes >= 4294967296.0) {
    raise(path_, label, "chunk of " + std::to_string(chunk_rows) + " rows exceeds HDF5's 4 GiB chunk limit");
  }
  if (object_exists(fid, dset)) raise(path_, label, "already exists");
  check_parents(fid, path_, label, dset);
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), maxdims.data()), H5Sclose);
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (!space.valid() || !dcpl.valid() || H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()) < 0) {
    raise(path_, label, with_detail("cannot set up chunked layout"));
  }
  // Parallel HDF5 writes unfiltered chunks only where they are allocated: allocate them when the dataset is
  // extended (with the default fill time nothing is written then).
  if (deflate == 0 && H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY) < 0)
    raise(path_, label, with_detail("cannot set the allocation time"));
  if (deflate > 0) {
    if (H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0) raise(path_, label, "this HDF5 has no deflate filter");
    // Shuffle first: grouping the bytes of equal significance is what lets deflate compress floats at all.
    if (H5Pset_shuffle(dcpl.get()) < 0 || H5Pset_deflate(dcpl.get(), static_cast<unsigned>(deflate)) < 0) {
      raise(path_, label, with_detail("cannot set up compression"));
    }
  }
  Handle lcpl = make_parents_lcpl(path_, label);
  Handle d(H5Dcreate2(fid, dset.c_str(), file_type(type), space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT), H5Dclose);
  if (!d.valid()) raise(path_, label, with_detail("cannot create"));
}

void File::append(const std::string& dset, const double* data, std::uint64_t rows) {
  append_impl(live(id_, path_), path_, dset, DType::F64, data, rows);
}
void File::append(const std::string& dset, const float* data, std::uint64_t rows) {
  append_impl(live(id_, path_), path_, dset, DType::F32, data, rows);
}
void File::append(const std::string& dset, const std::int64_t* data, std::uint64_t rows) {
  append_impl(live(id_, path_), path_, dset, DType::I64, data, rows);
}
void File::append(const std::string& dset, const std::uint8_t* data, std::uint64_t rows) {
  append_impl(live(id_, path_), path_, dset, DType::U8, data, rows);
}

void File::resize(const std::string& dset, std::uint64_t rows) {
  DatasetInfo info = inspect_dataset(live(id_, path_), path_, dset);
  const std::string label = dataset_label(dset);
  if (info.dims.empty()) raise(path_, label, "is scalar; cannot resize");
  if (info.maxdims[0] != H5S_UNLIMITED && rows > info.maxdims[0]) {
    raise(path_, label, "is not extendible beyond " + std::to_string(info.maxdims[0]) + " rows");
  }
  std::vector<hsize_t> dims = info.dims;
  dims[0] = rows;
  if (H5Dset_extent(info.dset.get(), dims.data()) < 0) {
    raise(path_, label, with_detail("cannot resize to " + std::to_string(rows) + " rows"));
  }
}

void File::write_rows(const std::string& dset, const std::vector<RowRange>& ranges, DType type, const void* data,
                      RowRange cols) {
  DatasetInfo info = inspect_dataset(live(id_, path_), path_, dset);
  const std::string label = dataset_label(dset);
  DType stored;
  if (!dtype_of(info.type.get(), &stored) || stored != type)
    raise(path_, label, std::string("cannot write ") + type_name(type) + " data to this dataset");
  if (info.dims.empty()) raise(path_, label, "is scalar; cannot write rows");
  const bool some_cols = cols.rows > 0;
  if (some_cols && (info.dims.size() < 2 || cols.row0 + cols.rows > info.dims[1]))
    raise(path_, label, "columns out of range");
  Handle fspace(H5Dget_space(info.dset.get()), H5Sclose);
  if (!fspace.valid() || H5Sselect_none(fspace.get()) < 0) raise(path_, label, with_detail("cannot select"));
  hsize_t total_rows = 0;
  for (const RowRange& r : ranges) {
    if (r.rows == 0) continue;
    if (r.row0 + r.rows > info.dims[0])
      raise(path_, label,
            "rows " + std::to_string(r.row0) + ".." + std::to_string(r.row0 + r.rows) + " beyond its " +
                std::to_string(info.dims[0]) + " rows");
    std::vector<hsize_t> start(info.dims.size(), 0), count = info.dims;
    start[0] = r.row0;
    count[0] = r.rows;
    if (some_cols) {
      start[1] = cols.row0;
      count[1] = cols.rows;
    }
    const H5S_seloper_t op = total_rows == 0 ? H5S_SELECT_SET : H5S_SELECT_OR;
    if (H5Sselect_hyperslab(fspace.get(), op, start.data(), nullptr, count.data(), nullptr) < 0)
      raise(path_, label, with_detail("cannot select rows"));
    total_rows += r.rows;
  }
  std::vector<hsize_t> mdims = info.dims;
  mdims[0] = std::max<hsize_t>(total_rows, 1);
  if (some_cols) mdims[1] = cols.rows;
  Handle mspace(H5Screate_simple(static_cast<int>(mdims.size()), mdims.data(), nullptr), H5Sclose);
  if (!mspace.valid() || (total_rows == 0 && H5Sselect_none(mspace.get()) < 0))
    raise(path_, label, with_detail("cannot select"));
  Handle dxpl(H5Pcreate(H5P_DATASET_XFER), H5Pclose);
  if (!dxpl.valid() || (parallel_ && H5Pset_dxpl_mpio(dxpl.get(), H5FD_MPIO_COLLECTIVE) < 0))
    raise(path_, label, with_detail("cannot set up the transfer"));
  if (total_rows > 0 && data == nullptr) raise(path_, label, "write from a null pointer");
  static const double dummy = 0;
  if (H5Dwrite(info.dset.get(), mem_type(type), mspace.get(), fspace.get(), dxpl.get(),
               data != nullptr ? data : &dummy) < 0)
    raise(path_, label, with_detail("cannot write"));
}

std::uint64_t File::rows(const std::string& dset) const {
  DatasetInfo info = inspect_dataset(live(id_, path_), path_, dset);
  if (info.dims.empty()) raise(path_, dataset_label(dset), "is scalar; it has no rows");
  return info.dims[0];
}

std::vector<std::uint64_t> File::shape(const std::string& dset) const {
  DatasetInfo info = inspect_dataset(live(id_, path_), path_, dset);
  return {info.dims.begin(), info.dims.end()};
}

DType File::dtype(const std::string& dset) const {
  DatasetInfo info = inspect_dataset(live(id_, path_), path_, dset);
  DType t;
  if (!dtype_of(info.type.get(), &t)) {
    raise(path_, dataset_label(dset),
          std::string("holds ") + class_name(H5Tget_class(info.type.get())) + " values of " +
              std::to_string(H5Tget_size(info.type.get())) + " bytes, not f64/f32/i64/u8");
  }
  return t;
}

std::vector<double> File::read_f64(const std::string& dset, std::uint64_t row0, std::int64_t nrows) const {
  return read_rows<double>(live(id_, path_), path_, dset, H5T_NATIVE_DOUBLE, row0, nrows);
}
std::vector<float> File::read_f32(const std::string& dset, std::uint64_t row0, std::int64_t nrows) const {
  return read_rows<float>(live(id_, path_), path_, dset, H5T_NATIVE_FLOAT, row0, nrows);
}
std::vector<std::int64_t> File::read_i64(const std::string& dset, std::uint64_t row0, std::int64_t nrows) const {
  return read_rows<std::int64_t>(live(id_, path_), path_, dset, H5T_NATIVE_INT64, row0, nrows);
}
std::vector<std::uint8_t> File::read_u8(const std::string& dset, std::uint64_t row0, std::int64_t nrows) const {
  return read_rows<std::uint8_t>(live(id_, path_), path_, dset, H5T_NATIVE_UINT8, row0, nrows);
}

void File::flush() {
  if (H5Fflush(live(id_, path_), H5F_SCOPE_GLOBAL) < 0) raise(path_, "", with_detail("cannot flush"));
}

}  // namespace latflow::io
