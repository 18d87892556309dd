#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Seeded, time-bounded kill -9 fault injection for latflow commands.

For each command: one uninterrupted reference run; then cycles in fresh directories, each of which starts the
command, kills it with SIGKILL at a random moment, checks that every file left behind is readable, starts it
again (the resume), and so on until a run finishes on its own; the final result is then compared with the
reference, every dataset of the ensemble bitwise except wall-clock times (train: the ensemble that `sample` then
makes from the checkpoint, so the weights and the training history with its evaluations are compared too;
run/sample/hmc: their ensemble). The config logs every 5 steps, checkpoints every 3 and evaluates every 25 (and after the last step, 60) on
`--eval-samples` proposals, so kills land inside history intervals and during evaluations, the final one
included (counted as kills_in_final_eval).

  /usr/bin/python3 tests/fault_injection.py --latflow build/bin/latflow --kills 20            # >= 20 per command
  /usr/bin/python3 tests/fault_injection.py --latflow build/bin/latflow --kills 2 --time-limit 45   # ctest

Readability after every kill: complete ensembles (*.h5) and JSON reports must open and read in full (h5py,
json); checkpoints (CKPT, CKPT.1, CKPT.2) must be intact zip archives (every record's CRC; LibTorch writes them
but does not check them) and are loaded by latflow itself on the next resume, whose output must not warn that one
was unreadable. Temporary files (*.tmp) are not committed files and are not checked; *.partial ensembles must
read in full (the write protocol promises a readable committed prefix at every moment, creation included), and
the restarts of run/sample/hmc pass --resume (a leftover OUTPUT.partial is refused without it). Exit status 0 if
there was at least one kill and no unreadable file and no mismatch.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

try:
    import h5py
    import numpy as np
except ImportError:  # ctest treats 77 as "skipped"
    print("fault_injection.py needs h5py and numpy (Debian: python3-h5py)")
    sys.exit(77)

CONFIG = """# fault-injection config: small and quick, one thread
[lattice]
extents = 4 4
[phi4]
m2 = -1
lam = 1
[flow]
layers = 4
hidden = 8
[train]
steps = {steps}
batch = 64
lr_schedule = constant
log_every = 5
checkpoint_every = 3
eval_every = 25
eval_samples = {eval_samples}
[sample]
proposals = {proposals}
block = 250
[hmc]
chains = 4
thermalization = 20
trajectories = {trajectories}
save_every = 20
[run]
output = out.h5
seed = 7
threads = 1
"""

# Datasets that hold wall-clock times: they differ between any two runs.
TIME_DATASETS = {"/training/wall_seconds", "/training/eval_wall_seconds"}


def env():
    e = dict(os.environ)
    e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_ess_singleton_isolated="1")
    return e


def start(latflow, args, cwd):
    return subprocess.Popen([latflow] + args, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def run_to_end(latflow, args, cwd, timeout=600):
    p = start(latflow, args, cwd)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def read_all(path):
    """Every dataset of an HDF5 file, read in full: {name: ndarray}. Raises if anything is unreadable."""
    data = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data["/" + name] = obj[()]
        f.visititems(visit)
        data["@status"] = f.attrs.get("status")
        if "model" in f:
            data["@weights_hash"] = f["model"].attrs.get("weights_hash")
    return data


def check_files(d, partial_must_read):
    """Names of the files in d that are not readable, and the number of *.partial files left."""
    bad, partials = [], 0
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        if name.endswith(".tmp") or name.endswith(".ini") or name == "log.txt":
            continue
        try:
            if name.endswith(".partial"):
                partials += 1
                if partial_must_read:
                    read_all(path)
            elif name.endswith(".h5"):
                read_all(path)
            elif name.endswith(".json"):
                with open(path) as f:
                    json.load(f)
            elif ".ckpt" in name:
                with zipfile.ZipFile(path) as z:
                    if z.testzip() is not None:
                        raise ValueError("CRC mismatch")
        except Exception as e:  # noqa: BLE001 - any failure to read is what we count
            bad.append(f"{name} ({type(e).__name__}: {str(e)[:80]})")
    return bad, partials


def same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind == "f":
            return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
        return a.shape == b.shape and np.array_equal(a, b)
    return a == b


def without_resume_key(text):
    """The effective config records how the run was started (its first line quotes the command line, and
    `resume = true`); that is provenance, not the ensemble's content."""
    if isinstance(text, bytes):
        text = text.decode()
    return "\n".join(line for line in str(text).splitlines()
                     if not line.startswith("resume = ") and not line.startswith("# effective configuration"))


def compare_ensembles(ref, got):
    diffs = []
    for k in sorted(set(ref) | set(got)):
        if k in TIME_DATASETS:
            continue
        if k not in ref or k not in got:
            diffs.append(f"{k} only in {'reference' if k in ref else 'resumed run'}")
        elif k == "/input/effective_config":
            if without_resume_key(ref[k]) != without_resume_key(got[k]):
                diffs.append(k)
        elif not same(ref[k], got[k]):
            diffs.append(k)
    return diffs


class Command:
    """How to run one latflow command, resume it and read its result."""

    def __init__(self, name, args, result, resume_args=(), needs_checkpoint=False):
        self.name, self.args, self.result = name, args, result
        self.resume_args = list(resume_args)
        self.needs_checkpoint = needs_checkpoint


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latflow", required=True)
    ap.add_argument("--commands", default="train,run,sample,hmc")
    ap.add_argument("--kills", type=int, default=20, help="kills per command (stops early at --time-limit)")
    ap.add_argument("--max-kills-per-cycle", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=1800, help="seconds for the whole script")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--proposals", type=int, default=4000)
    ap.add_argument("--trajectories", type=int, default=400)
    ap.add_argument("--eval-samples", type=int, default=20000)
    ap.add_argument("--resume-flag", default="--resume", help="extra argument for restarting run/sample/hmc")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    latflow = os.path.abspath(a.latflow)
    rng = random.Random(a.seed)
    t_start = time.monotonic()
    work = a.workdir or tempfile.mkdtemp(prefix="latflow_fault_")
    os.makedirs(work, exist_ok=True)
    config = CONFIG.format(steps=a.steps, proposals=a.proposals, trajectories=a.trajectories,
                           eval_samples=a.eval_samples)
    resume = [a.resume_flag] if a.resume_flag else []

    def train_result(d, out):
        # The trained checkpoint's ensemble: weights hash, training history and evaluations, proposals, chain.
        rc, sout = run_to_end(latflow, ["sample", "fi.ini"], d)
        if rc != 0:
            return {"sample failed": sout[-300:]}
        return read_all(os.path.join(d, "out.h5"))

    def ensemble_result(d, out):
        return read_all(os.path.join(d, "out.h5"))

    commands = {
        "train": Command("train", ["train", "fi.ini"], train_result),
        # A leftover OUTPUT.partial is refused without --resume: restarts of run/sample/hmc pass the flag.
        "run": Command("run", ["run", "fi.ini"], ensemble_result, resume),
        "sample": Command("sample", ["sample", "fi.ini"], ensemble_result, resume, needs_checkpoint=True),
        "hmc": Command("hmc", ["hmc", "fi.ini"], ensemble_result, resume),
    }
    # A trained checkpoint for `sample`, made once.
    trained = os.path.join(work, "trained")
    if any(commands[c].needs_checkpoint for c in a.commands.split(",")):
        os.makedirs(trained, exist_ok=True)
        with open(os.path.join(trained, "fi.ini"), "w") as f:
            f.write(config)
        rc, out = run_to_end(latflow, ["train", "fi.ini"], trained)
        if rc != 0:
            sys.exit(f"could not train the checkpoint for sample: {out}")

    def fresh_dir(name, with_checkpoint):
        d = os.path.join(work, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        with open(os.path.join(d, "fi.ini"), "w") as f:
            f.write(config)
        if with_checkpoint:
            for n in os.listdir(trained):
                if ".ckpt" in n:
                    shutil.copy2(os.path.join(trained, n), d)
        return d

    summary, ok = {}, True
    for cname in a.commands.split(","):
        cmd = commands[cname]
        s = dict(kills=0, kills_with_checkpoint=0, kills_with_partial=0, kills_with_output=0, kills_in_final_eval=0,
                 cycles=0, unreadable=0, mismatches=0, partials_left=0, unreadable_files=[], diffs=[])
        summary[cname] = s
        ref_dir = fresh_dir(f"{cname}_ref", cmd.needs_checkpoint)
        t0 = time.monotonic()
        rc, out = run_to_end(latflow, cmd.args, ref_dir)
        t_ref = time.monotonic() - t0
        if rc != 0:
            print(f"{cname}: reference run failed (exit {rc}):\n{out}")
            ok = False
            continue
        ref = cmd.result(ref_dir, out)
        s["reference_seconds"] = round(t_ref, 2)
        while s["kills"] < a.kills and time.monotonic() - t_start < a.time_limit:
            s["cycles"] += 1
            d = fresh_dir(f"{cname}_cycle", cmd.needs_checkpoint)
            kills_here, first, log = 0, True, []
            while True:
                args = cmd.args + ([] if first else cmd.resume_args)
                p = start(latflow, args, d)
                may_kill = kills_here < a.max_kills_per_cycle and s["kills"] < a.kills
                delay = rng.uniform(0.0, t_ref) if may_kill else None
                try:
                    out, _ = p.communicate(timeout=delay if may_kill else 600)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    out, _ = p.communicate()
                    kills_here += 1
                    s["kills"] += 1
                    names = os.listdir(d)
                    s["kills_with_checkpoint"] += any(n.endswith(".ckpt") for n in names)
                    s["kills_with_partial"] += any(n.endswith(".partial") for n in names)
                    s["kills_with_output"] += "out.h5" in names
                    # Training's last step logged, its final evaluation not: the kill fell in that evaluation.
                    last = f"step {a.steps:6d}/{a.steps}"
                    s["kills_in_final_eval"] += (cname in ("train", "run") and last in out
                                                 and f"eval   step {a.steps}:" not in out)
                    bad, partials = check_files(d, bool(cmd.resume_args))
                    s["unreadable"] += len(bad)
                    s["unreadable_files"] += [f"kill {s['kills']} at {delay:.2f}s: {b}" for b in bad]
                    log.append(f"killed at {delay:.2f}s")
                    first = False
                    continue
                log.append(f"exit {p.returncode}")
                if "unreadable" in out and "warning" in out:
                    s["unreadable"] += 1
                    s["unreadable_files"].append("latflow warned: " + out[out.find("warning"):][:200])
                done = p.returncode == 0
                # `run` killed after its ensemble was committed (during the analysis) finds the output complete.
                if p.returncode == 3 and "exists; refusing to overwrite" in out and cname in ("run", "sample", "hmc"):
                    try:
                        done = read_all(os.path.join(d, "out.h5")).get("@status") == "complete"
                    except Exception:  # noqa: BLE001
                        done = False
                if not done:
                    s["mismatches"] += 1
                    s["diffs"].append(f"cycle {s['cycles']}: resume failed (exit {p.returncode}): {out[-300:]}")
                    break
                got = cmd.result(d, out)
                bad, s_partials = check_files(d, bool(cmd.resume_args))
                s["unreadable"] += len(bad)
                s["unreadable_files"] += [f"final: {b}" for b in bad]
                s["partials_left"] += s_partials
                diffs = compare_ensembles(ref, got)
                if diffs:
                    s["mismatches"] += 1
                    s["diffs"].append(f"cycle {s['cycles']} ({', '.join(log)}): {diffs[:5]}")
                break
            print(f"{cname} cycle {s['cycles']}: {', '.join(log)}", flush=True)
        if s["kills"] == 0 or s["unreadable"] or s["mismatches"]:
            ok = False
    elapsed = time.monotonic() - t_start
    print(json.dumps({"seed": a.seed, "seconds": round(elapsed, 1), "commands": summary}, indent=1))
    for cname, s in summary.items():
        print(f"{cname}: {s['kills']} kills in {s['cycles']} cycles ({s['kills_in_final_eval']} during the final "
              f"evaluation), {s['unreadable']} unreadable files, {s['mismatches']} mismatches")
    if not a.keep and not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
