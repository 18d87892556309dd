#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The include rules of docs/design.md "Library layers", checked on the source tree (a ctest entry, label fast):

- LibTorch stays out of the torch-free code: the sources of the latflow_base target (read from lib/CMakeLists.txt),
  their headers, the ensemble stores (samplers/imh_chain.*, samplers/hmc_store.*), the CLI's job interface
  (lib/latflow/jobs/jobs.hpp, and flows/train_history.hpp that it includes) and apps/ include neither
  <torch/...>, <ATen/...>, <c10/...> nor, through latflow headers, anything that does;
- <hdf5.h> is included only by the HDF5 wrapper, lib/latflow/io/h5.cpp, h5_detail.cpp and the private
  h5_detail.hpp; <mpi.h> only by lib/latflow/parallel/mpi.cpp and by those three (parallel HDF5's MPI-IO driver
  takes an MPI communicator); "latflow/io/h5_detail.hpp" only by h5.cpp and h5_detail.cpp;
- Boost.Program_options only in apps/;
- lib/latflow/kernels/ (the latflow_kernels library) is torch-free and includes no latflow header outside
  kernels/; lib/latflow/core/ includes no latflow header outside core/ (the bottom layers depend on nothing above);
- the job functions sit on top: no header of lib/latflow/jobs/ is included elsewhere in lib/, and flows/ includes
  nothing from samplers/.

  /usr/bin/python3 tests/check_layers.py [SOURCE_DIR]

prints one line per violation (file, include, rule) and exits 1 if there is any.
"""
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
TORCH = ("torch/", "ATen/", "c10/")


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    lib = os.path.join(root, "lib")
    files = {}
    for top in ("lib", "apps"):
        for d, _, names in os.walk(os.path.join(root, top)):
            for n in names:
                if n.endswith((".cpp", ".hpp")):
                    p = os.path.relpath(os.path.join(d, n), root)
                    with open(os.path.join(root, p)) as f:
                        files[p] = INCLUDE.findall(f.read())

    def local(inc):  # a "latflow/..." include as a path in the tree, or None
        p = os.path.join("lib", inc)
        return p if p in files else None

    # Files that reach LibTorch, directly or through latflow headers (fixed point).
    torchful = {p for p, incs in files.items() if any(i.startswith(TORCH) for _, i in incs)}
    changed = True
    while changed:
        changed = False
        for p, incs in files.items():
            if p not in torchful and any(local(i) in torchful for _, i in incs):
                torchful.add(p)
                changed = True

    with open(os.path.join(lib, "CMakeLists.txt")) as f:
        cm = f.read()
    base = re.search(r"add_library\(latflow_base STATIC(.*?)\)", cm, re.S).group(1).split()
    base += re.search(r"add_library\(latflow_kernels STATIC(.*?)\)", cm, re.S).group(1).split()
    torch_free = set()
    for src in base:
        for ext in (".cpp", ".hpp"):
            p = os.path.join("lib", os.path.splitext(src)[0] + ext)
            if p in files:
                torch_free.add(p)
    for stem in ("samplers/imh_chain", "samplers/hmc_store"):
        for ext in (".cpp", ".hpp"):
            torch_free.add(os.path.join("lib/latflow", stem + ext))
    torch_free.add("lib/latflow/jobs/jobs.hpp")
    torch_free.add("lib/latflow/flows/train_history.hpp")
    torch_free |= {p for p in files if p.startswith("apps/")}

    bad = []
    for p in sorted(torch_free):
        if p not in files:
            bad.append(f"{p}: listed as torch-free but missing")
        elif p in torchful:
            via = [i for _, i in files[p] if i.startswith(TORCH) or local(i) in torchful]
            bad.append(f"{p}: includes {via[0]}, which reaches LibTorch (torch-free code)")
    h5 = ["lib/latflow/io/h5.cpp", "lib/latflow/io/h5_detail.cpp", "lib/latflow/io/h5_detail.hpp"]
    only = {
        "hdf5.h": h5,
        "mpi.h": ["lib/latflow/parallel/mpi.cpp"] + h5,
        "latflow/io/h5_detail.hpp": ["lib/latflow/io/h5.cpp", "lib/latflow/io/h5_detail.cpp"],  # private header
    }
    for p, incs in sorted(files.items()):
        for folder in ("kernels", "core"):
            if p.startswith(f"lib/latflow/{folder}/"):
                for _, i in incs:
                    if i.startswith("latflow/") and not i.startswith(f"latflow/{folder}/"):
                        bad.append(f"{p}: includes {i}, above the {folder}/ layer")
        if p.startswith("lib/latflow/") and not p.startswith("lib/latflow/jobs/"):
            for _, i in incs:
                if i.startswith("latflow/jobs/"):
                    bad.append(f"{p}: includes {i}, a job header, below the jobs/ layer")
        if p.startswith("lib/latflow/flows/"):
            for _, i in incs:
                if i.startswith("latflow/samplers/"):
                    bad.append(f"{p}: includes {i}: flows/ does not depend on samplers/")
        for d, i in incs:
            if i in only and p not in only[i]:
                inc = f"<{i}>" if d == "<" else f'"{i}"'
                bad.append(f"{p}: includes {inc}, which only {', '.join(only[i])} may include")
            if i.startswith("boost/program_options") and not p.startswith("apps/"):
                bad.append(f"{p}: includes <{i}> outside apps/")
    for line in bad:
        print(line)
    print(f"check_layers: {len(files)} files, {len(torchful)} reach LibTorch, {len(torch_free)} torch-free, "
          f"{len(bad)} violation(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
