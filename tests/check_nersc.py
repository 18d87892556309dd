#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""latflow export against an independent reader (a ctest entry): a small 4D SU(3) HMC run with stored
configurations is exported as NERSC and ILDG files, which are then read here with numpy alone, in the file
conventions of docs/file-format.md "NERSC and ILDG" (sites with x fastest and t slowest, directions x, y, z, t,
big-endian 3x3 complex matrices):

- the checksum (32-bit sum of the little-endian words of the values) and the header's LINK_TRACE and PLAQUETTE
  equal those recomputed from the data;
- the plaquette recomputed from the file equals latflow's own `plaq` of that chain and trajectory to 1e-12 (a
  transposed site or direction order would not: the extents are all different);
- the ILDG binary record holds the same numbers as the NERSC data;
- `latflow import` accepts both files, and a corrupted copy is refused with one line and exit code 3;
- `latflow hmc --hmc.start FILE` starts every chain from the file's links (in latflow's order), and a file of
  another lattice is refused with one line naming hmc.start.

  /usr/bin/python3 tests/check_nersc.py LATFLOW_BINARY
"""
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np


def nersc(path):
    with open(path, "rb") as f:
        raw = f.read()
    end = raw.index(b"END_HEADER\n") + len(b"END_HEADER\n")
    header = dict(
        (k.strip(), v.strip()) for k, v in (line.split("=", 1) for line in raw[:end].decode().splitlines() if "=" in line)
    )
    dims = [int(header["DIMENSION_%d" % k]) for k in (1, 2, 3, 4)]
    data = np.frombuffer(raw[end:], dtype=">f8")
    return header, dims, data


def plaquette(u):
    """u[t, z, y, x, mu, 3, 3]: mean over sites and planes of Re tr U_munu / 3."""
    axis = {0: 3, 1: 2, 2: 1, 3: 0}  # direction mu -> the array axis of its coordinate
    total = 0.0
    for mu in range(4):
        for nu in range(mu + 1, 4):
            a, b = u[..., mu, :, :], u[..., nu, :, :]
            b_mu = np.roll(b, -1, axis=axis[mu])
            a_nu = np.roll(a, -1, axis=axis[nu])
            p = a @ b_mu @ np.conj(np.swapaxes(a_nu, -1, -2)) @ np.conj(np.swapaxes(b, -1, -2))
            total += np.trace(p, axis1=-2, axis2=-1).real.mean() / 3
    return total / 6


def main():
    latflow = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "s.ini")
        with open(cfg, "w") as f:
            f.write("theory = sun\n[lattice]\nextents = 2 3 4 5\n[sun]\nn = 3\nbeta = 5.0\n[flow]\nlayers = 0\n"
                    "[hmc]\nchains = 2\nthermalization = 5\ntrajectories = 4\nsave_every = 2\n[run]\nseed = 4\n")
        h5 = os.path.join(d, "s.h5")
        subprocess.run([latflow, "hmc", cfg, "--output", h5], check=True, capture_output=True)
        for fmt in ("nersc", "ildg"):
            subprocess.run([latflow, "export", h5, "--format", fmt, "--out", os.path.join(d, fmt)], check=True,
                           capture_output=True)
        with h5py.File(h5, "r") as f:
            plaq = f["/chains/observables/plaq"][()]  # [T, C]
            traj = f["/configs/trajectory"][()]
            therm = f["/hmc"].attrs["thermalization"]
        checked = 0
        for t in traj:
            for c in range(2):
                name = "s_c%d_t%d" % (c, t)
                header, dims, data = nersc(os.path.join(d, "nersc", name + ".nersc"))
                assert dims == [2, 3, 4, 5], dims
                words = data.astype("<f8").view("<u4")
                assert int(words.sum(dtype=np.uint64)) % 2**32 == int(header["CHECKSUM"], 16), "checksum"
                z = data.reshape(-1, 2)
                u = (z[:, 0] + 1j * z[:, 1]).reshape(dims[3], dims[2], dims[1], dims[0], 4, 3, 3)
                trace = np.trace(u, axis1=-2, axis2=-1).real.mean() / 3
                assert abs(trace - float(header["LINK_TRACE"])) < 1e-12, (trace, header["LINK_TRACE"])
                p = plaquette(u)
                assert abs(p - float(header["PLAQUETTE"])) < 1e-12, (p, header["PLAQUETTE"])
                assert abs(p - plaq[t - therm, c]) < 1e-12, (p, plaq[t - therm, c])
                with open(os.path.join(d, "ildg", name + ".ildg"), "rb") as f:
                    raw = f.read()
                pos, records = 0, {}
                while pos < len(raw):
                    assert int.from_bytes(raw[pos:pos + 4], "big") == 0x456789AB, "LIME magic"
                    length = int.from_bytes(raw[pos + 8:pos + 16], "big")
                    kind = raw[pos + 16:pos + 144].split(b"\0")[0].decode()
                    records[kind] = raw[pos + 144:pos + 144 + length]
                    pos += 144 + (length + 7) // 8 * 8
                assert b"<field>su3gauge</field>" in records["ildg-format"]
                assert b"<lx>2</lx><ly>3</ly><lz>4</lz><lt>5</lt>" in records["ildg-format"]
                assert np.array_equal(np.frombuffer(records["ildg-binary-data"], dtype=">f8"), data), "ildg data"
                checked += 1
        assert checked == 2 * len(traj) and checked >= 4, checked
        first = os.path.join(d, "nersc", "s_c0_t%d.nersc" % traj[0])
        r = subprocess.run([latflow, "import", first, os.path.join(d, "ildg", "s_c0_t%d.ildg" % traj[0])],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.count(", plaquette ") == 2, r
        # hmc.start: chains start from the file; a trajectory of length 1e-9 leaves them there to ~1e-9.
        start_h5 = os.path.join(d, "start.h5")
        subprocess.run([latflow, "hmc", cfg, "--hmc.start", first, "--hmc.thermalization", "0", "--hmc.trajectories",
                        "1", "--hmc.save_every", "1", "--hmc.trajectory_length", "1e-9", "--hmc.n_md", "1",
                        "--output", start_h5], check=True, capture_output=True)
        header, dims, data = nersc(first)
        with h5py.File(start_h5, "r") as f:
            field = f["/configs/field"][0]  # [C, 4, L0, L1, L2, L3, 3, 3, 2]
        z = data.reshape(-1, 2)
        u = (z[:, 0] + 1j * z[:, 1]).reshape(dims[3], dims[2], dims[1], dims[0], 4, 3, 3)
        ours = np.transpose(u, (4, 3, 2, 1, 0, 5, 6))  # [mu, x, y, z, t, 3, 3]: latflow's order
        for c in range(2):
            assert np.abs(field[c, ..., 0] + 1j * field[c, ..., 1] - ours).max() < 1e-7, "hmc.start"
        r = subprocess.run([latflow, "hmc", cfg, "--hmc.start", first, "--lattice.extents", "2 3 4 4", "--output",
                            os.path.join(d, "x.h5")], capture_output=True, text=True)
        assert r.returncode == 2 and "hmc.start" in r.stderr and r.stderr.count("\n") == 1, r
        with open(first, "rb") as f:
            raw = bytearray(f.read())
        raw[-5] ^= 0x01
        bad = os.path.join(d, "bad.nersc")
        with open(bad, "wb") as f:
            f.write(raw)
        r = subprocess.run([latflow, "import", bad], capture_output=True, text=True)
        assert r.returncode == 3 and r.stderr.count("\n") == 1 and "checksum mismatch" in r.stderr, r
    print("check_nersc: %d exported configurations read independently and verified" % checked)
    return 0


if __name__ == "__main__":
    sys.exit(main())
