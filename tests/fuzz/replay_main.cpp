// SPDX-License-Identifier: MIT
// main() of the fuzz targets in the normal build, which has no libFuzzer (ctest label fuzz, docs/design.md
// "Reliability testing"). It feeds the target's LLVMFuzzerTestOneInput, in this order,
//   1. the seeds: each FILE named, and every regular file in each DIRECTORY named (sorted by name);
//   2. each file named with --replay-only, as it is (reproducers of known defects: never mutated);
//   3. N mutants of the seeds: mutant i is seed (i mod #seeds) with 1 to 4 of: a bit flipped, a byte set to a
//      random or boundary value, a truncation, a chunk of random bytes or INI-like text inserted, a chunk
//      duplicated elsewhere, a chunk erased, a chunk overwritten by another part of the input, a splice with the
//      tail of another seed. Mutant i draws from its own std::mt19937_64 stream, seeded from (--seed, i), with the
//      modulus taken by hand (no std::uniform_int_distribution): the same bytes with every compiler and standard
//      library, and each mutant can be rebuilt on its own;
// and prints how many inputs ran and how many the reader accepted. Once --max-seconds have passed it stops before
// the next mutant (the inputs run are then a prefix of the same sequence).
//
// A crash, an abort (also an exception that is not a latflow::Error: it ends in std::terminate), an exit() from
// inside the target or an input running longer than --timeout seconds fails the run, after a line naming the input
// (seed file, or mutant number, --seed and operations), a raw backtrace, and its bytes written to the --artifact
// file; `fuzz_X --mutations 0 FILE` replays it, so does the libFuzzer build (`build-fuzz/tests/fuzz/fuzz_X FILE`).
//
// Known defects of the libraries under the readers: with --known-hang MARK or --known-crash MARK the inputs run in
// a child process, and an input that runs past --timeout (--known-hang) or crashes or aborts (--known-crash) while
// a stack frame whose shared-library path or exported (mangled) symbol name contains MARK is on the stack is
// counted and listed, not failed; a new child goes on with the next input. (After a call through a garbage
// pointer the unwinder stops early; then the raw words of the live stack are searched for a return address into a
// function whose name contains a --known-crash MARK.) The ensemble smoke passes --known-hang
// libhdf5: HDF5 1.10.8 loops forever on some corrupt files (tests/fuzz/hdf5_findings), which latflow cannot stop.
// (The checkpoint smoke passed --known-crash InputArchive9load_from for LibTorch's archive reader until latflow
// checked the zip CRCs before it.) Every other crash and timeout still fails.
//
// A failure ends the run by the signal of the input (status 1 where the inputs run in a child). Exit status 1 also
// if no seed was accepted (see fuzz_support.hpp), 2 on a bad command line or a missing seed path.
//
//   fuzz_X [--mutations N] [--seed S] [--max-seconds T] [--timeout T] [--max-len BYTES] [--artifact FILE]
//          [--known-hang MARK]... [--known-crash MARK]... [--replay-only FILE]... PATH...
#include <dlfcn.h>
#include <execinfo.h>
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;
using Clock = std::chrono::steady_clock;

// What the fatal-signal handler reports; set before each input.
char g_label[1024];
std::string g_artifact;
const Bytes* g_input = nullptr;
std::vector<std::string> g_known_hang, g_known_crash;  // --known-hang, --known-crash
bool g_child = false;                                  // running inputs in a child process

// Exit statuses of a child process.
constexpr int kDone = 100, kKnownHang = 101, kKnownCrash = 102;

void say(const char* s) {
  for (std::size_t n = std::strlen(s); n > 0;) {
    const ssize_t w = ::write(STDERR_FILENO, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<std::size_t>(w);
  }
}

void write_artifact() {
  if (!g_input) return;
  const int fd = ::open(g_artifact.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  const std::uint8_t* p = g_input->data();
  for (std::size_t n = g_input->size(); n > 0;) {
    const ssize_t w = ::write(fd, p, n);
    if (w <= 0) break;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  ::close(fd);
  say("replay: its bytes are in ");
  say(g_artifact.c_str());
  say("\n");
}

// True if the code address `pc` lies in a shared library whose path contains one of `marks` (with `by_path`), or
// inside an exported function whose mangled name contains one (checked against the symbol's size, so an address in
// a hidden function after it does not count).
bool marked(void* pc, const std::vector<std::string>& marks, bool by_path) {
  Dl_info info;
  void* entry = nullptr;
  if (!::dladdr1(pc, &info, &entry, RTLD_DL_SYMENT)) return false;
  const auto* sym = static_cast<const ElfW(Sym)*>(entry);
  const auto* at = static_cast<const char*>(pc) - 1;  // a return address may point just past its call's function
  const auto* begin = static_cast<const char*>(info.dli_saddr);
  const bool in_sym = info.dli_sname && sym && begin && at >= begin && at < begin + sym->st_size;
  for (const auto& m : marks) {
    if (by_path && info.dli_fname && std::strstr(info.dli_fname, m.c_str())) return true;
    if (in_sym && std::strstr(info.dli_sname, m.c_str())) return true;
  }
  return false;
}

void* g_stack_top = nullptr;  // a frame address in main(): every input runs below it

// Whether the input that raised `sig` hit a known defect: a frame of the unwound stack is marked; or, after a call
// through a garbage pointer, where the unwinder stops at an address outside every library, a word of the live stack
// (from here up to main()) is a return address into a marked function.
bool known_defect(int sig, void* const* frames, int n) {
  const auto& marks = sig == SIGALRM ? g_known_hang : g_known_crash;
  for (int i = 0; i < n; ++i) {
    if (marked(frames[i], marks, true)) return true;
  }
  Dl_info info;
  if (sig == SIGALRM || n == 0 || ::dladdr(frames[n - 1], &info) || !g_stack_top) return false;
  for (auto* w = static_cast<void**>(__builtin_frame_address(0)); w < static_cast<void**>(g_stack_top); ++w) {
    if (marked(*w, marks, false)) return true;
  }
  return false;
}

// In a child, a known defect ends it with kKnownHang or kKnownCrash. Otherwise this reports the input and
// re-raises the signal with its default action (SA_RESETHAND). backtrace() and dladdr() are not async-signal-safe
// in theory; backtrace() is warmed up in install_handlers(), and a second alarm ends a stuck handler.
void on_fatal(int sig) {
  ::alarm(5);
  void* frames[128];
  const int n = ::backtrace(frames, 128);
  if (g_child && known_defect(sig, frames, n)) ::_exit(sig == SIGALRM ? kKnownHang : kKnownCrash);
  say(sig == SIGALRM ? "\nreplay: input ran past --timeout: " : "\nreplay: fatal signal on input: ");
  say(g_label);
  say("\n");
  ::backtrace_symbols_fd(frames, n, STDERR_FILENO);
  write_artifact();
  ::raise(sig);
}

// A target that calls exit() would otherwise end the run early, with a status that may read as success.
void exit_during_input() {
  if (!g_input) return;
  say("\nreplay: the target called exit() on input: ");
  say(g_label);
  say("\n");
  write_artifact();
  ::_exit(1);
}

void install_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_fatal;
  sa.sa_flags = SA_RESETHAND | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGALRM}) sigaction(sig, &sa, nullptr);
  std::atexit(exit_during_input);
  void* warm[4];
  ::backtrace(warm, 4);  // loads the unwinder now, not inside a signal handler
}

Bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::uint64_t below(std::mt19937_64& rng, std::uint64_t n) { return n == 0 ? 0 : rng() % n; }

// One mutant of seeds[which] (see the top of the file); `ops` gets the operations applied, e.g. "flip@12.3".
Bytes mutate(const std::vector<Bytes>& seeds, std::size_t which, std::mt19937_64& rng, std::size_t max_len,
             std::string& ops) {
  static const std::uint8_t boundary[] = {0x00, 0x01, 0x7f, 0x80, 0xff, '\n', '=', '['};
  static const char text[] = "0123456789.-+eE[]= \n#;,xnai";
  Bytes d = seeds[which];
  const int n_ops = 1 + static_cast<int>(below(rng, 4));
  char buf[96];
  for (int k = 0; k < n_ops; ++k) {
    const std::size_t n = d.size();
    buf[0] = '\0';
    switch (below(rng, 8)) {
      case 0:  // bit flip
        if (n) {
          const std::size_t p = below(rng, n);
          const int bit = static_cast<int>(below(rng, 8));
          d[p] ^= static_cast<std::uint8_t>(1u << bit);
          std::snprintf(buf, sizeof buf, "flip@%zu.%d", p, bit);
        }
        break;
      case 1:  // byte set to a random or boundary value
        if (n) {
          const std::size_t p = below(rng, n);
          d[p] = below(rng, 2) ? boundary[below(rng, sizeof boundary)] : static_cast<std::uint8_t>(rng());
          std::snprintf(buf, sizeof buf, "set@%zu=%u", p, unsigned(d[p]));
        }
        break;
      case 2:  // truncation
        if (n) {
          const std::size_t p = below(rng, n);
          d.resize(p);
          std::snprintf(buf, sizeof buf, "trunc@%zu", p);
        }
        break;
      case 3: {  // insert random bytes or INI-like text
        const std::size_t p = below(rng, n + 1), len = 1 + below(rng, 64);
        const bool ascii = below(rng, 2);
        Bytes chunk(len);
        for (auto& c : chunk) {
          c = ascii ? static_cast<std::uint8_t>(text[below(rng, sizeof text - 1)]) : static_cast<std::uint8_t>(rng());
        }
        d.insert(d.begin() + p, chunk.begin(), chunk.end());
        std::snprintf(buf, sizeof buf, "insert@%zu+%zu%s", p, len, ascii ? "txt" : "");
        break;
      }
      case 4:  // duplicate a chunk elsewhere
        if (n) {
          const std::size_t a = below(rng, n), len = 1 + below(rng, std::min<std::size_t>(n - a, 512));
          const std::size_t p = below(rng, n + 1);
          const Bytes chunk(d.begin() + a, d.begin() + a + len);
          d.insert(d.begin() + p, chunk.begin(), chunk.end());
          std::snprintf(buf, sizeof buf, "dup@%zu+%zu>%zu", a, len, p);
        }
        break;
      case 5:  // erase a chunk
        if (n) {
          const std::size_t a = below(rng, n), len = 1 + below(rng, std::min<std::size_t>(n - a, 512));
          d.erase(d.begin() + a, d.begin() + a + len);
          std::snprintf(buf, sizeof buf, "erase@%zu+%zu", a, len);
        }
        break;
      case 6:  // overwrite a chunk with another part of the input
        if (n) {
          const std::size_t a = below(rng, n), b = below(rng, n);
          const std::size_t len = 1 + below(rng, std::min<std::size_t>({n - a, n - b, 256}));
          std::memmove(d.data() + b, d.data() + a, len);
          std::snprintf(buf, sizeof buf, "copy@%zu+%zu>%zu", a, len, b);
        }
        break;
      default: {  // keep a head, append the tail of another seed
        const std::size_t other = below(rng, seeds.size());
        const Bytes& o = seeds[other];
        const std::size_t a = below(rng, n + 1), b = below(rng, o.size() + 1);
        d.resize(a);
        d.insert(d.end(), o.begin() + b, o.end());
        std::snprintf(buf, sizeof buf, "splice@%zu+seed%zu@%zu", a, other, b);
        break;
      }
    }
    if (d.size() > max_len) d.resize(max_len);
    if (buf[0]) ops += (ops.empty() ? "" : " ") + std::string(buf);
  }
  return d;
}

[[noreturn]] void usage(const char* prog, const std::string& why) {
  std::fprintf(stderr,
               "%s: %s\nusage: %s [--mutations N] [--seed S] [--max-seconds T] [--timeout T] [--max-len BYTES] "
               "[--artifact FILE] [--known-hang MARK]... [--known-crash MARK]... [--replay-only FILE]... PATH...\n",
               prog, why.c_str(), prog);
  std::exit(2);
}

std::vector<fs::path> list_files(const std::vector<std::string>& paths, const char* prog) {
  std::vector<fs::path> files;
  for (const auto& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<fs::path> in_dir;
      for (const auto& e : fs::directory_iterator(p)) {
        if (e.is_regular_file()) in_dir.push_back(e.path());
      }
      std::sort(in_dir.begin(), in_dir.end());
      files.insert(files.end(), in_dir.begin(), in_dir.end());
    } else if (fs::is_regular_file(p, ec)) {
      files.emplace_back(p);
    } else {
      usage(prog, "no such file or directory: " + p);
    }
  }
  return files;
}

// The inputs in the order they run: seeds, replay-only files, mutants.
struct Inputs {
  std::vector<fs::path> files, replay_files;
  std::vector<Bytes> seeds, replay;
  std::uint64_t mutations = 1000, seed = 1;
  std::size_t max_len = 1 << 20;

  std::uint64_t fixed() const { return seeds.size() + replay.size(); }
  std::uint64_t size() const { return fixed() + mutations; }
  // Input j; its description goes to `label`.
  Bytes get(std::uint64_t j, char* label, std::size_t cap) const {
    using ull = unsigned long long;
    if (j < seeds.size()) {
      std::snprintf(label, cap, "seed %llu/%llu %s", ull(j + 1), ull(fixed()), files[j].c_str());
      return seeds[j];
    }
    if (j < fixed()) {
      std::snprintf(label, cap, "seed %llu/%llu %s (replay only)", ull(j + 1), ull(fixed()),
                    replay_files[j - seeds.size()].c_str());
      return replay[j - seeds.size()];
    }
    const std::uint64_t i = j - fixed();
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + i);
    const std::size_t which = i % seeds.size();
    std::string ops;
    Bytes d = mutate(seeds, which, rng, max_len, ops);
    std::snprintf(label, cap, "mutant %llu (--seed %llu) of %s: %s", ull(i), ull(seed), files[which].c_str(),
                  ops.c_str());
    return d;
  }
};

// Where the run stands; shared with the child processes (MAP_SHARED) when there are any.
struct Progress {
  std::uint64_t next = 0;                          // the input running or to run next
  std::uint64_t accepted = 0, fixed_accepted = 0;  // all inputs, seeds and replay-only files
  std::uint64_t seeds_accepted = 0;                // the seeds that are mutated
};

// Runs the inputs from p->next on, in this process, until all have run or max_seconds have passed since t0
// (checked only before a mutant). A failure does not return (on_fatal, exit_during_input).
void run_inputs(const Inputs& in, Progress* p, unsigned timeout, double max_seconds, Clock::time_point t0) {
  static const std::uint8_t empty = 0;
  for (; p->next < in.size(); ++p->next) {
    if (p->next >= in.fixed() && std::chrono::duration<double>(Clock::now() - t0).count() >= max_seconds) break;
    const Bytes d = in.get(p->next, g_label, sizeof g_label);
    const std::size_t before = latflow::fuzz::accepted;
    g_input = &d;
    ::alarm(timeout);
    LLVMFuzzerTestOneInput(d.empty() ? &empty : d.data(), d.size());
    ::alarm(0);
    g_input = nullptr;
    if (latflow::fuzz::accepted > before) {
      ++p->accepted;
      if (p->next < in.fixed()) ++p->fixed_accepted;
      if (p->next < in.seeds.size()) ++p->seeds_accepted;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string prog = fs::path(argv[0]).filename().string();
  Inputs in;
  double max_seconds = 30;
  unsigned timeout = 10;
  g_artifact = "crash-" + prog + ".bin";
  std::vector<std::string> paths, replay_paths;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      paths.push_back(a);
      continue;
    }
    if (i + 1 >= argc) usage(prog.c_str(), a + " needs a value");
    const std::string v = argv[++i];
    try {
      if (a == "--mutations")
        in.mutations = std::stoull(v);
      else if (a == "--seed")
        in.seed = std::stoull(v);
      else if (a == "--max-seconds")
        max_seconds = std::stod(v);
      else if (a == "--timeout")
        timeout = static_cast<unsigned>(std::stoul(v));
      else if (a == "--max-len")
        in.max_len = std::stoull(v);
      else if (a == "--artifact")
        g_artifact = v;
      else if (a == "--known-hang")
        g_known_hang.push_back(v);
      else if (a == "--known-crash")
        g_known_crash.push_back(v);
      else if (a == "--replay-only")
        replay_paths.push_back(v);
      else
        usage(prog.c_str(), "unknown option " + a);
    } catch (const std::logic_error&) {
      usage(prog.c_str(), "bad value for " + a + ": " + v);
    }
  }
  in.files = list_files(paths, prog.c_str());
  in.replay_files = list_files(replay_paths, prog.c_str());
  if (in.files.empty()) usage(prog.c_str(), "no seed files (the paths to mutate are missing or empty)");
  for (const auto& f : in.files) in.seeds.push_back(read_file(f));
  for (const auto& f : in.replay_files) in.replay.push_back(read_file(f));

  g_stack_top = __builtin_frame_address(0);
  install_handlers();
  const auto t0 = Clock::now();
  const bool children = !g_known_hang.empty() || !g_known_crash.empty();
  std::size_t known = 0;
  Progress here;
  Progress* p = &here;
  std::string tmpdir;
  if (!children) {
    run_inputs(in, p, timeout, max_seconds, t0);
  } else {
    void* shared = ::mmap(nullptr, sizeof(Progress), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    char templ[] = "/tmp/latflow_replay_XXXXXX";
    if (shared == MAP_FAILED || !::mkdtemp(templ)) {
      std::perror("replay: mmap/mkdtemp");
      return 2;
    }
    p = new (shared) Progress;
    tmpdir = templ;
    ::setenv("TMPDIR", templ, 1);  // the children's input files (fuzz_support.hpp); a killed child leaves its own
    for (;;) {
      std::fflush(nullptr);
      const pid_t pid = ::fork();
      if (pid < 0) {
        std::perror("replay: fork");
        return 2;
      }
      if (pid == 0) {
        g_child = true;
        run_inputs(in, p, timeout, max_seconds, t0);
        std::exit(kDone);
      }
      int st = 0;
      while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
      }
      const int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      if (code == kDone) break;
      if (code == kKnownHang || code == kKnownCrash) {
        in.get(p->next, g_label, sizeof g_label);
        const char* what =
            code == kKnownHang ? "ran past --timeout in a --known-hang frame" : "crashed in a --known-crash frame";
        std::printf("%s: known defect, counted, not failed (%s): %s\n", prog.c_str(), what, g_label);
        ++known;
        ++p->next;
        continue;
      }
      if (WIFSIGNALED(st)) {
        std::fprintf(stderr, "replay: failed: the child process was killed by signal %d (%s)\n", WTERMSIG(st),
                     strsignal(WTERMSIG(st)));
      } else {
        std::fprintf(stderr, "replay: failed: the child process exited with status %d\n", code);
      }
      std::error_code ec;
      fs::remove_all(tmpdir, ec);
      return 1;
    }
    std::error_code ec;
    fs::remove_all(tmpdir, ec);
  }

  using ull = unsigned long long;
  const std::uint64_t mutants = p->next > in.fixed() ? p->next - in.fixed() : 0;
  const std::string known_note = children ? "; " + std::to_string(known) + " hit a known defect (listed above)" : "";
  std::printf(
      "%s: %llu inputs in %.1f s: %llu seeds (%llu accepted) + %llu mutants (%llu accepted; --seed %llu)%s%s; "
      "the others were rejected with a latflow::Error\n",
      prog.c_str(), ull(p->next), std::chrono::duration<double>(Clock::now() - t0).count(), ull(in.fixed()),
      ull(p->fixed_accepted), ull(mutants), ull(p->accepted - p->fixed_accepted), ull(in.seed),
      p->next < in.size() ? ", stopped by --max-seconds" : "", known_note.c_str());
  if (p->seeds_accepted == 0) {
    std::fprintf(stderr, "%s: the reader accepted none of the seeds: the corpus is stale\n", prog.c_str());
    return 1;
  }
  return 0;
}
