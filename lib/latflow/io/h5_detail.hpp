// SPDX-License-Identifier: MIT
// Private to the HDF5 wrapper: included only by io/h5.cpp (the File member functions) and io/h5_detail.cpp (the
// helpers declared here), the only code that includes hdf5.h (tests/check_layers.py). Every hid_t lives in a
// Handle, so it is closed on every path, including the ones that throw. Messages are one line:
// "<file>: <object>: <cause>", optionally followed by the innermost HDF5 error in parentheses; HDF5's own stack
// dump is switched off.
#pragma once
#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "latflow/io/h5.hpp"

namespace latflow::io::detail {

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

// --- errors ---------------------------------------------------------------------------------------------------

// Switches off HDF5's error-stack printing. Called at every create/open (see h5_detail.cpp).
void silence_hdf5();
// cause, followed by the innermost error on HDF5's current stack in parentheses when there is one. Must be called
// before any other HDF5 call, since API calls clear the stack.
std::string with_detail(const std::string& cause);
// Throws IoError("<file>: <object>: <cause>"), or "<file>: <cause>" when object is empty.
[[noreturn]] void raise(const std::string& file, const std::string& object, const std::string& cause);
// id, or IoError when the File was moved from.
hid_t live(std::int64_t id, const std::string& file);

std::string dataset_label(const std::string& dset);
std::string attr_label(const std::string& obj, const std::string& name);
std::string shape_str(const std::vector<hsize_t>& dims);

// --- objects --------------------------------------------------------------------------------------------------

// True when every component resolves; a missing intermediate group is "does not exist", not an error.
bool object_exists(hid_t fid, const std::string& obj);

enum class Kind { kAny, kGroup, kDataset };
Handle open_object(hid_t fid, const std::string& file, const std::string& obj, Kind kind);

// Before creating obj: every existing ancestor must be a group.
void check_parents(hid_t fid, const std::string& file, const std::string& label, const std::string& obj);
// Link-creation list that makes missing parent groups, so "/a/b/x" can be written without create_group first.
Handle make_parents_lcpl(const std::string& file, const std::string& label);
// Variable-length UTF-8: what h5py writes for str and reads back as str.
Handle make_vlen_utf8(const std::string& file, const std::string& label);

// --- types ----------------------------------------------------------------------------------------------------

// Memory and file representations of DType. The file types are fixed little-endian so files are identical
// across platforms; HDF5 converts on big-endian hosts.
hid_t mem_type(DType t);
hid_t file_type(DType t);
std::size_t type_size(DType t);
const char* type_name(DType t);
const char* class_name(H5T_class_t c);
// DType of a stored type, or false when it is none of the four (e.g. a file written by another tool).
bool dtype_of(hid_t type, DType* out);

// --- reading and writing --------------------------------------------------------------------------------------

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

// Instantiated in h5_detail.cpp for T = double and std::int64_t.
template <class T>
std::vector<T> read_all_numeric(const Source& src, hid_t mem, bool integer_only, const std::string& file,
                                const std::string& label);
template <class T>
T read_one_numeric(const Source& src, hid_t mem, bool integer_only, const std::string& file, const std::string& label);
std::string read_one_string(const Source& src, const std::string& file, const std::string& label);

struct OpenAttr {
  Handle obj;
  Handle attr;
};
OpenAttr open_attr(hid_t fid, const std::string& file, const std::string& obj, const std::string& name);

// Replaces any attribute of that name: the old one may have another type or length.
void write_attr_impl(hid_t fid, const std::string& file, const std::string& obj, const std::string& name, hid_t ftype,
                     hid_t mtype, const std::vector<hsize_t>& dims, const void* buf);
// Creates a dataset and writes it whole; on a failed write the half-made dataset is unlinked again.
void create_written_dataset(hid_t fid, const std::string& file, const std::string& dset, hid_t ftype, hid_t mtype,
                            const std::vector<hsize_t>& dims, const void* buf);

struct DatasetInfo {
  Handle dset;
  Handle type;
  std::vector<hsize_t> dims;
  std::vector<hsize_t> maxdims;
};
DatasetInfo inspect_dataset(hid_t fid, const std::string& file, const std::string& dset);

hsize_t product(const std::vector<hsize_t>& dims, std::size_t from);

void append_impl(hid_t fid, const std::string& file, const std::string& dset, DType type, const void* data,
                 std::uint64_t rows);

// Instantiated in h5_detail.cpp for T = double, float, std::int64_t and std::uint8_t.
template <class T>
std::vector<T> read_rows(hid_t fid, const std::string& file, const std::string& dset, hid_t mem, std::uint64_t row0,
                         std::int64_t nrows);

}  // namespace latflow::io::detail
