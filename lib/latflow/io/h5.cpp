// SPDX-License-Identifier: MIT
// The only translation unit that includes hdf5.h. Every hid_t lives in a Handle, so it is closed on every
// path, including the ones that throw. Messages are one line: "<file>: <object>: <cause>", optionally
// followed by the innermost HDF5 error in parentheses; HDF5's own stack dump is switched off.
#include "latflow/io/h5.hpp"

#include <hdf5.h>
#include <mpi.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <limits>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

#include "latflow/core/error.hpp"

namespace latflow::io {
namespace {

static_assert(std::is_same_v<hid_t, std::int64_t>, "File::id_ stores a hid_t as std::int64_t");
static_assert(sizeof(hsize_t) == sizeof(std::uint64_t), "shapes are passed as std::uint64_t and must fit hsize_t");

// Owns one HDF5 identifier and its matching close function (H5Fclose, H5Dclose, ...).
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) noexcept : id_(id), closer_(closer) {}
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)), closer_(other.closer_) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
      closer_ = other.closer_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() noexcept {
    // A failing close cannot be reported from a destructor; the data path reports errors via H5Fflush
    // instead.
    if (id_ >= 0 && closer_ != nullptr) closer_(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// Called at every create/open rather than from a static initialiser: a static initialiser would start the
// HDF5 library before main(), i.e. before MPI_Init, and parallel HDF5 only ties its shutdown to MPI_Finalize
// when it is initialised after MPI. Cheap, and it also survives an H5close()/H5open() cycle by other code.
void silence_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

herr_t innermost_error(unsigned n, const H5E_error2_t* err, void* out) {
  // Walked upward, entry 0 is the most specific error, which usually carries the OS-level cause.
  if (n == 0 && err != nullptr && err->desc != nullptr) {
    try {
      *static_cast<std::string*>(out) = err->desc;
    } catch (...) {
      return -1;
    }
  }
  return 0;
}

// The innermost error on HDF5's current stack, condensed to one short line; empty when there is none.
// Must be called before any other HDF5 call, since API calls clear the stack.
std::string hdf5_detail() {
  std::string desc;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, &desc);
  std::replace(desc.begin(), desc.end(), '\n', ' ');
  // "unable to open file: name = '...', errno = 2, error message = 'No such ...', flags = ..." reads better
  // as "unable to open file: No such ...".
  const std::string marker = "error message = '";
  const auto msg_at = desc.find(marker);
  std::string os_message;
  if (msg_at != std::string::npos) {
    const auto begin = msg_at + marker.size();
    os_message = desc.substr(begin, desc.find('\'', begin) - begin);
  }
  const auto cut = std::min(desc.find(", "), desc.find(": name ="));
  if (cut != std::string::npos) desc.erase(cut);
  if (!os_message.empty()) desc += ": " + os_message;
  if (desc.size() > 200) desc = desc.substr(0, 200) + "...";
  return desc;
}

std::string with_detail(const std::string& cause) {
  const std::string detail = hdf5_detail();
  return detail.empty() ? cause : cause + " (" + detail + ")";
}

[[noreturn]] void raise(const std::string& file, const std::string& object, const std::string& cause) {
  throw IoError(object.empty() ? file + ": " + cause : file + ": " + object + ": " + cause);
}

hid_t live(std::int64_t id, const std::string& file) {
  if (id < 0) raise(file, "", "file is not open (moved from)");
  return id;
}

std::string dataset_label(const std::string& dset) { return "dataset " + dset; }
std::string attr_label(const std::string& obj, const std::string& name) { return "attribute " + name + " of " + obj; }

std::string shape_str(const std::vector<hsize_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::size_t pos = 0;
  while (pos <= path.size()) {
    const auto next = std::min(path.find('/', pos), path.size());
    if (next > pos) parts.push_back(path.substr(pos, next - pos));
    pos = next + 1;
  }
  return parts;
}

// True when every component resolves; a missing intermediate group is "does not exist", not an error.
bool object_exists(hid_t fid, const std::string& obj) {
  const auto parts = split_path(obj);
  if (parts.empty()) return true;  // the root group
  std::string prefix;
  for (const auto& part : parts) {
    prefix += "/" + part;
    if (H5Lexists(fid, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
  }
  // The link may be dangling (soft or external link whose target is gone).
  return H5Oexists_by_name(fid, prefix.c_str(), H5P_DEFAULT) > 0;
}

enum class Kind { kAny, kGroup, kDataset };

Handle open_object(hid_t fid, const std::string& file, const std::string& obj, Kind kind) {
  const std::string label = kind == Kind::kGroup     ? "group " + obj
                            : kind == Kind::kDataset ? dataset_label(obj)
                                                     : "object " + obj;
  if (!object_exists(fid, obj)) raise(file, label, "not found");
  Handle h(H5Oopen(fid, obj.c_str(), H5P_DEFAULT), H5Oclose);
  if (!h.valid()) raise(file, label, with_detail("cannot open"));
  const H5I_type_t type = H5Iget_type(h.get());
  if (kind == Kind::kGroup && type != H5I_GROUP) raise(file, label, "is not a group");
  if (kind == Kind::kDataset && type != H5I_DATASET) raise(file, label, "is not a dataset");
  return h;
}

// Before creating obj: every existing ancestor must be a group. HDF5 would fail anyway, but with an obscure
// message ("message type not found") when an ancestor is a dataset.
void check_parents(hid_t fid, const std::string& file, const std::string& label, const std::string& obj) {
  const auto parts = split_path(obj);
  std::string prefix;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    prefix += "/" + parts[i];
    if (!object_exists(fid, prefix)) return;  // the rest is created
    Handle h(H5Oopen(fid, prefix.c_str(), H5P_DEFAULT), H5Oclose);
    if (!h.valid()) raise(file, label, with_detail("cannot open parent " + prefix));
    if (H5Iget_type(h.get()) != H5I_GROUP) raise(file, label, "parent " + prefix + " is not a group");
  }
}

// Link-creation list that makes missing parent groups, so "/a/b/x" can be written without create_group first.
Handle make_parents_lcpl(const std::string& file, const std::string& label) {
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  if (!lcpl.valid() || H5Pset_create_intermediate_group(lcpl.get(), 1) < 0) {
    raise(file, label, with_detail("cannot create property list"));
  }
  return lcpl;
}

// Variable-length UTF-8: what h5py writes for str and reads back as str.
Handle make_vlen_utf8(const std::string& file, const std::string& label) {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  if (!t.valid() || H5Tset_size(t.get(), H5T_VARIABLE) < 0 || H5Tset_cset(t.get(), H5T_CSET_UTF8) < 0) {
    raise(file, label, with_detail("cannot create string type"));
  }
  return t;
}

Handle make_space(const std::vector<hsize_t>& dims, const std::string& file, const std::string& label) {
  Handle s(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
           H5Sclose);
  if (!s.valid()) raise(file, label, with_detail("cannot create dataspace " + shape_str(dims)));
  return s;
}

// Memory and file representations of DType. The file types are fixed little-endian so files are identical
// across platforms; HDF5 converts on big-endian hosts.
hid_t mem_type(DType t) {
  switch (t) {
    case DType::F64: return H5T_NATIVE_DOUBLE;
    case DType::F32: return H5T_NATIVE_FLOAT;
    case DType::I64: return H5T_NATIVE_INT64;
    case DType::U8: return H5T_NATIVE_UINT8;
  }
  return H5I_INVALID_HID;
}
hid_t file_type(DType t) {
  switch (t) {
    case DType::F64: return H5T_IEEE_F64LE;
    case DType::F32: return H5T_IEEE_F32LE;
    case DType::I64: return H5T_STD_I64LE;
    case DType::U8: return H5T_STD_U8LE;
  }
  return H5I_INVALID_HID;
}
std::size_t type_size(DType t) {
  switch (t) {
    case DType::F64: return 8;
    case DType::F32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}
const char* type_name(DType t) {
  switch (t) {
    case DType::F64: return "f64";
    case DType::F32: return "f32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
  }
  return "?";
}

const char* class_name(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "variable-length";
    default: return "non-numeric";
  }
}

// DType of a stored type, or false when it is none of the four (e.g. a file written by another tool).
bool dtype_of(hid_t type, DType* out) {
  const H5T_class_t cls = H5Tget_class(type);
  const std::size_t size = H5Tget_size(type);
  if (cls == H5T_FLOAT && size == 8)
    *out = DType::F64;
  else if (cls == H5T_FLOAT && size == 4)
    *out = DType::F32;
  else if (cls == H5T_INTEGER && size == 8 && H5Tget_sign(type) == H5T_SGN_2)
    *out = DType::I64;
  else if (cls == H5T_INTEGER && size == 1 && H5Tget_sign(type) == H5T_SGN_NONE)
    *out = DType::U8;
  else
    return false;
  return true;
}

// Attributes and datasets are read the same way apart from the calls; this hides the difference.
struct Source {
  hid_t id;
  bool is_attr;
  Handle type() const { return Handle(is_attr ? H5Aget_type(id) : H5Dget_type(id), H5Tclose); }
  Handle space() const { return Handle(is_attr ? H5Aget_space(id) : H5Dget_space(id), H5Sclose); }
  herr_t read(hid_t mem, void* buf) const {
    return is_attr ? H5Aread(id, mem, buf) : H5Dread(id, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
  }
};

template <class T>
std::vector<T> read_all_numeric(const Source& src, hid_t mem, bool integer_only, const std::string& file,
                                const std::string& label) {
  Handle type = src.type();
  Handle space = src.space();
  if (!type.valid() || !space.valid()) raise(file, label, with_detail("cannot inspect"));
  const H5T_class_t cls = H5Tget_class(type.get());
  if (cls != H5T_INTEGER && !(cls == H5T_FLOAT && !integer_only)) {
    raise(file, label,
          std::string("holds ") + class_name(cls) + " values, expected " + (integer_only ? "integers" : "numbers"));
  }
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n < 0) raise(file, label, with_detail("cannot inspect"));
  std::vector<T> out(static_cast<std::size_t>(n));
  if (n > 0 && src.read(mem, out.data()) < 0) raise(file, label, with_detail("cannot read"));
  return out;
}

template <class T>
T read_one_numeric(const Source& src, hid_t mem, bool integer_only, const std::string& file, const std::string& label) {
  const auto values = read_all_numeric<T>(src, mem, integer_only, file, label);
  if (values.size() != 1) raise(file, label, "holds " + std::to_string(values.size()) + " values, expected 1");
  return values[0];
}

std::string read_one_string(const Source& src, const std::string& file, const std::string& label) {
  Handle type = src.type();
  Handle space = src.space();
  if (!type.valid() || !space.valid()) raise(file, label, with_detail("cannot inspect"));
  const H5T_class_t cls = H5Tget_class(type.get());
  if (cls != H5T_STRING) raise(file, label, std::string("holds ") + class_name(cls) + " values, expected a string");
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n != 1) raise(file, label, "holds " + std::to_string(n) + " strings, expected 1");
  // Memory type = stored type, so no character-set conversion is asked of HDF5 (it has none for ASCII/UTF-8).
  Handle mem(H5Tcopy(type.get()), H5Tclose);
  if (!mem.valid()) raise(file, label, with_detail("cannot read"));
  const htri_t variable = H5Tis_variable_str(type.get());
  if (variable > 0) {
    char* p = nullptr;
    if (src.read(mem.get(), &p) < 0) raise(file, label, with_detail("cannot read"));
    std::string s = p != nullptr ? p : "";
    H5free_memory(p);
    return s;
  }
  // Fixed-length strings (e.g. numpy bytes written by h5py): padded with NUL or spaces.
  std::string buf(H5Tget_size(type.get()), '\0');
  if (src.read(mem.get(), buf.data()) < 0) raise(file, label, with_detail("cannot read"));
  buf.erase(std::min(buf.find('\0'), buf.size()));
  if (H5Tget_strpad(type.get()) == H5T_STR_SPACEPAD) buf.erase(buf.find_last_not_of(' ') + 1);
  return buf;
}

struct OpenAttr {
  Handle obj;
  Handle attr;
};

OpenAttr open_attr(hid_t fid, const std::string& file, const std::string& obj, const std::string& name) {
  OpenAttr a;
  a.obj = open_object(fid, file, obj, Kind::kAny);
  const std::string label = attr_label(obj, name);
  const htri_t ex = H5Aexists(a.obj.get(), name.c_str());
  if (ex < 0) raise(file, label, with_detail("cannot look up"));
  if (ex == 0) raise(file, label, "not found");
  a.attr = Handle(H5Aopen(a.obj.get(), name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!a.attr.valid()) raise(file, label, with_detail("cannot open"));
  return a;
}

// Replaces any attribute of that name: the old one may have another type or length.
void write_attr_impl(hid_t fid, const std::string& file, const std::string& obj, const std::string& name, hid_t ftype,
                     hid_t mtype, const std::vector<hsize_t>& dims, const void* buf) {
  Handle o = open_object(fid, file, obj, Kind::kAny);
  const std::string label = attr_label(obj, name);
  const htri_t ex = H5Aexists(o.get(), name.c_str());
  if (ex < 0) raise(file, label, with_detail("cannot look up"));
  if (ex > 0 && H5Adelete(o.get(), name.c_str()) < 0) raise(file, label, with_detail("cannot replace"));
  Handle space = make_space(dims, file, label);
  Handle a(H5Acreate2(o.get(), name.c_str(), ftype, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  // Attributes live in the object header (64 KiB in the default file format): long arrays belong in datasets.
  if (!a.valid()) raise(file, label, with_detail("cannot create"));
  if (buf != nullptr && H5Awrite(a.get(), mtype, buf) < 0) raise(file, label, with_detail("cannot write"));
}

// Creates a dataset and writes it whole; on a failed write the half-made dataset is unlinked again.
void create_written_dataset(hid_t fid, const std::string& file, const std::string& dset, hid_t ftype, hid_t mtype,
                            const std::vector<hsize_t>& dims, const void* buf) {
  const std::string label = dataset_label(dset);
  if (object_exists(fid, dset)) raise(file, label, "already exists");
  check_parents(fid, file, label, dset);
  Handle space = make_space(dims, file, label);
  Handle lcpl = make_parents_lcpl(file, label);
  Handle d(H5Dcreate2(fid, dset.c_str(), ftype, space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (!d.valid()) raise(file, label, with_detail("cannot create"));
  if (buf != nullptr && H5Dwrite(d.get(), mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
    const std::string cause = with_detail("cannot write");
    d.reset();
    H5Ldelete(fid, dset.c_str(), H5P_DEFAULT);
    raise(file, label, cause);
  }
}

struct DatasetInfo {
  Handle dset;
  Handle type;
  std::vector<hsize_t> dims;
  std::vector<hsize_t> maxdims;
};

DatasetInfo inspect_dataset(hid_t fid, const std::string& file, const std::string& dset) {
  DatasetInfo info;
  info.dset = open_object(fid, file, dset, Kind::kDataset);
  const std::string label = dataset_label(dset);
  info.type = Handle(H5Dget_type(info.dset.get()), H5Tclose);
  Handle space(H5Dget_space(info.dset.get()), H5Sclose);
  if (!info.type.valid() || !space.valid()) raise(file, label, with_detail("cannot inspect"));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) raise(file, label, with_detail("cannot inspect"));
  info.dims.resize(rank);
  info.maxdims.resize(rank);
  if (H5Sget_simple_extent_dims(space.get(), info.dims.data(), info.maxdims.data()) < 0) {
    raise(file, label, with_detail("cannot inspect"));
  }
  return info;
}

hsize_t product(const std::vector<hsize_t>& dims, std::size_t from) {
  hsize_t p = 1;
  for (std::size_t i = from; i < dims.size(); ++i) p *= dims[i];
  return p;
}

void append_impl(hid_t fid, const std::string& file, const std::string& dset, DType type, const void* data,
                 std::uint64_t rows) {
  DatasetInfo info = inspect_dataset(fid, file, dset);
  const std::string label = dataset_label(dset);
  DType stored;
  if (!dtype_of(info.type.get(), &stored)) raise(file, label, "has a type latflow does not write");
  // No silent conversion on the write path: appending doubles to a u8 dataset is a bug, not a cast.
  if (stored != type) {
    raise(file, label,
          std::string("cannot append ") + type_name(type) + " data to a " + type_name(stored) + " dataset");
  }
  if (info.dims.empty()) raise(file, label, "is scalar; cannot append rows");
  const hsize_t old_rows = info.dims[0];
  if (info.maxdims[0] != H5S_UNLIMITED && old_rows + rows > info.maxdims[0]) {
    raise(file, label, "is not extendible beyond " + std::to_string(info.maxdims[0]) + " rows");
  }
  if (rows == 0) return;
  if (data == nullptr) raise(file, label, "append of " + std::to_string(rows) + " rows from a null pointer");
  std::vector<hsize_t> new_dims = info.dims;
  new_dims[0] = old_rows + rows;
  if (H5Dset_extent(info.dset.get(), new_dims.data()) < 0) raise(file, label, with_detail("cannot extend"));
  std::vector<hsize_t> start(info.dims.size(), 0);
  start[0] = old_rows;
  std::vector<hsize_t> count = info.dims;
  count[0] = rows;
  Handle fspace(H5Dget_space(info.dset.get()), H5Sclose);
  Handle mspace(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), H5Sclose);
  const bool ok =
      fspace.valid() && mspace.valid() &&
      H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr) >= 0 &&
      H5Dwrite(info.dset.get(), mem_type(type), mspace.get(), fspace.get(), H5P_DEFAULT, data) >= 0;
  if (!ok) {
    // Roll the extent back so a failed append does not leave rows of fill values that look like data.
    const std::string cause =
        with_detail("cannot write rows " + std::to_string(old_rows) + ".." + std::to_string(old_rows + rows));
    H5Dset_extent(info.dset.get(), info.dims.data());
    raise(file, label, cause);
  }
}

template <class T>
std::vector<T> read_rows(hid_t fid, const std::string& file, const std::string& dset, hid_t mem, std::uint64_t row0,
                         std::int64_t nrows) {
  DatasetInfo info = inspect_dataset(fid, file, dset);
  const std::string label = dataset_label(dset);
  const H5T_class_t cls = H5Tget_class(info.type.get());
  if (cls != H5T_INTEGER && cls != H5T_FLOAT) {
    raise(file, label, std::string("holds ") + class_name(cls) + " values, expected numbers");
  }
  if (nrows < -1) raise(file, label, "invalid row count " + std::to_string(nrows));
  if (info.dims.empty()) {
    if (row0 != 0 || nrows > 1) raise(file, label, "is scalar; only row 0 can be read");
    std::vector<T> out(nrows == 0 ? 0 : 1);
    if (!out.empty() && H5Dread(info.dset.get(), mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0) {
      raise(file, label, with_detail("cannot read"));
    }
    return out;
  }
  const hsize_t total = info.dims[0];
  const hsize_t n = nrows < 0 ? (row0 <= total ? total - row0 : 0) : static_cast<hsize_t>(nrows);
  if (row0 > total || n > total - row0) {
    raise(file, label,
          "rows " + std::to_string(row0) + ".." + std::to_string(row0 + n) + " out of range (it has " +
              std::to_string(total) + " rows)");
  }
  std::vector<hsize_t> count = info.dims;
  count[0] = n;
  std::vector<T> out(static_cast<std::size_t>(product(count, 0)));
  if (out.empty()) return out;
  std::vector<hsize_t> start(info.dims.size(), 0);
  start[0] = row0;
  Handle fspace(H5Dget_space(info.dset.get()), H5Sclose);
  Handle mspace(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), H5Sclose);
  const bool ok =
      fspace.valid() && mspace.valid() &&
      H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr) >= 0 &&
      H5Dread(info.dset.get(), mem, mspace.get(), fspace.get(), H5P_DEFAULT, out.data()) >= 0;
  if (!ok)
    raise(file, label, with_detail("cannot read rows " + std::to_string(row0) + ".." + std::to_string(row0 + n)));
  return out;
}

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
