// SPDX-License-Identifier: MIT
// The helpers of the HDF5 wrapper (declared in h5_detail.hpp): the error stack, handles, type mapping and the
// generic read, write, append and inspect code behind the File member functions of h5.cpp.
#include "latflow/io/h5_detail.hpp"

#include <algorithm>

#include "latflow/core/error.hpp"

namespace latflow::io::detail {
namespace {

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

Handle make_space(const std::vector<hsize_t>& dims, const std::string& file, const std::string& label) {
  Handle s(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
           H5Sclose);
  if (!s.valid()) raise(file, label, with_detail("cannot create dataspace " + shape_str(dims)));
  return s;
}

}  // namespace

// Called at every create/open rather than from a static initialiser: a static initialiser would start the
// HDF5 library before main(), i.e. before MPI_Init, and parallel HDF5 only ties its shutdown to MPI_Finalize
// when it is initialised after MPI. Cheap, and it also survives an H5close()/H5open() cycle by other code.
void silence_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

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

// The instantiations the File member functions use (h5_detail.hpp declares the templates only).
template std::vector<double> read_all_numeric<double>(const Source&, hid_t, bool, const std::string&,
                                                      const std::string&);
template std::vector<std::int64_t> read_all_numeric<std::int64_t>(const Source&, hid_t, bool, const std::string&,
                                                                  const std::string&);
template double read_one_numeric<double>(const Source&, hid_t, bool, const std::string&, const std::string&);
template std::int64_t read_one_numeric<std::int64_t>(const Source&, hid_t, bool, const std::string&,
                                                     const std::string&);
template std::vector<double> read_rows<double>(hid_t, const std::string&, const std::string&, hid_t, std::uint64_t,
                                               std::int64_t);
template std::vector<float> read_rows<float>(hid_t, const std::string&, const std::string&, hid_t, std::uint64_t,
                                             std::int64_t);
template std::vector<std::int64_t> read_rows<std::int64_t>(hid_t, const std::string&, const std::string&, hid_t,
                                                           std::uint64_t, std::int64_t);
template std::vector<std::uint8_t> read_rows<std::uint8_t>(hid_t, const std::string&, const std::string&, hid_t,
                                                           std::uint64_t, std::int64_t);

}  // namespace latflow::io::detail
