// host.cpp: a plain C++17 host shaped like a JUCE / iPlug2 plugin, using knnblend through its
// C ABI. A realtime thread runs a processBlock-like loop (kb_audio_begin_block, kb_audio_blend
// per frame and kb_audio_blend_block, kb_audio_end_block) while the message thread loads,
// publishes, unloads and switches RVC indexes between slots and polls the load tickets.
//
// The realtime thread proves what it may not do:
//   - allocations: it opts in to the LD_PRELOAD interposer alloc_counter.c (found with dlsym),
//     which counts every malloc/calloc/realloc/free/posix_memalign/aligned_alloc/memalign/valloc
//     it makes;
//   - system calls: it installs a seccomp filter that kills the process on any system call but
//     write, exit, exit_group and rt_sigreturn (strict mode would also forbid rdtsc, which the
//     library reads as its clock).
// It writes the searches, blends and the realtime thread's outputs to a file, so the Rust test
// can compare them with the Rust API on the same indexes and queries, bit for bit.
//
//   g++ -std=c++17 -O2 -Icapi/include host.cpp libknnblend.a -lpthread -ldl -lm -o host
//   LD_PRELOAD=./libkb_alloc_counter.so ./host run out.txt queries.f32 768 a.kbi b.index
//
// Modes: run (the proof), violate-alloc (the realtime thread allocates once: the interposer
// must count it; no filter), violate-syscall (it calls getpid under the filter: the process
// must die of SIGSYS).

#include "knnblend.h"

#include <dlfcn.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr size_t kFrames = 16;   // feature frames per audio block (RVC: about 16 per block)
constexpr size_t kK = 8;         // neighbours, as RVC
constexpr float kRatio = 0.75f;  // index rate
constexpr size_t kSlots = 3;
constexpr size_t kRecords = 48;  // realtime outputs kept for the comparison
constexpr int kWarmupBlocks = 64;
constexpr int kAllocKinds = 8;
const char* const kAllocNames[kAllocKinds] = {"malloc",         "calloc",        "realloc",
                                              "free",           "posix_memalign", "aligned_alloc",
                                              "memalign",       "valloc"};

using TrackFn = void (*)(int);
using CountsFn = void (*)(unsigned long*);

enum class Mode { Run, ViolateAlloc, ViolateSyscall };

void* volatile g_sink;  // keeps the deliberate allocation from being optimised away

[[noreturn]] void die(const char* what, kb_status code, kb_error* err) {
    std::fprintf(stderr, "host: %s failed: %s (%s)\n", what, kb_status_str(code),
                 err ? kb_error_message(err) : "no message");
    kb_error_free(&err);
    std::exit(4);
}

#define CHECK(call, what)                     \
    do {                                      \
        kb_error* err_ = nullptr;             \
        kb_status s_ = (call);                \
        if (s_ != KB_OK) die(what, s_, err_); \
    } while (0)

void hex_floats(FILE* f, const float* v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        std::memcpy(&b, &v[i], 4);
        std::fprintf(f, " %08" PRIx32, b);
    }
}

// Allows write, exit, exit_group and rt_sigreturn on the calling thread; any other system call
// kills the process (SIGSYS).
bool install_seccomp() {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_write, 4, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_exit, 3, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_exit_group, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_rt_sigreturn, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])),
                              filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

void raw_write(const char* s) {
    ssize_t r = write(2, s, std::strlen(s));
    (void)r;
}

// Everything the realtime thread touches, allocated before it starts.
struct Realtime {
    Mode mode = Mode::Run;
    kb_audio* audio = nullptr;
    const float* queries = nullptr;
    size_t nqueries = 0;
    size_t dim = 0;
    TrackFn track = nullptr;
    std::atomic<size_t> active_slot{0};
    std::atomic<bool> stop{false};
    std::atomic<bool> finished{false};
    std::atomic<uint64_t> blocks{0};
    // Results, written by the realtime thread, read after `finished`.
    uint64_t guarded_blocks = 0;
    uint64_t fading_blocks = 0;
    uint64_t serving_changes = 0;
    uint64_t errors = 0;
    bool filtered = false;
    std::vector<float> frame_out;  // kFrames * dim
    std::vector<float> block_out;  // kFrames * dim
    size_t nrecords = 0;
    uint64_t record_id[kRecords] = {};
    size_t record_offset[kRecords] = {};
    std::vector<float> records;  // kRecords * 2 * kFrames * dim
};

// One audio block, as a plugin's processBlock would run it.
void process_block(Realtime& rt, uint64_t b, bool record) {
    const size_t d = rt.dim;
    const float crossfade = (b % 3 == 0) ? 0.0f : -1.0f;  // instant, or the configured default
    kb_status s = kb_audio_begin_block(rt.audio, rt.active_slot.load(std::memory_order_relaxed),
                                       crossfade);
    if (s != KB_OK) rt.errors++;
    const bool fading = kb_audio_is_fading(rt.audio);
    const uint64_t id = kb_audio_serving_id(rt.audio);
    const size_t offset = (b * 5) % (rt.nqueries - kFrames + 1);
    const float* frames = rt.queries + offset * d;
    for (size_t f = 0; f < kFrames; f++) {
        kb_blend_outcome outcome;
        s = kb_audio_blend(rt.audio, frames + f * d, d, kK, kRatio, &rt.frame_out[f * d], d,
                           &outcome);
        if (s != KB_OK) rt.errors++;
    }
    size_t blended = 0;
    s = kb_audio_blend_block(rt.audio, frames, kFrames, d, kK, kRatio, rt.block_out.data(),
                             kFrames * d, &blended);
    if (s != KB_OK) rt.errors++;
    if (fading) rt.fading_blocks++;
    // Keep outputs of blocks served by one index (no crossfade), a few per index.
    if (record && !fading && id != 0 && rt.nrecords < kRecords) {
        const size_t last = rt.nrecords ? rt.record_id[rt.nrecords - 1] : 0;
        if (id != last || b % 64 == 0) {
            float* dst = &rt.records[rt.nrecords * 2 * kFrames * d];
            std::memcpy(dst, rt.frame_out.data(), kFrames * d * sizeof(float));
            std::memcpy(dst + kFrames * d, rt.block_out.data(), kFrames * d * sizeof(float));
            rt.record_id[rt.nrecords] = id;
            rt.record_offset[rt.nrecords] = offset;
            rt.nrecords++;
        }
    }
    kb_audio_end_block(rt.audio);
}

void realtime_thread(Realtime* p) {
    Realtime& rt = *p;
    uint64_t b = 0;
    // Warm up: every function and every code path once, lazy symbol binding, first touches.
    for (; b < kWarmupBlocks; b++) process_block(rt, b, false);
    if (rt.track) rt.track(1);
    if (rt.mode != Mode::ViolateAlloc) {
        if (!install_seccomp()) {
            raw_write("host: cannot install the seccomp filter\n");
            std::exit(1);
        }
        rt.filtered = true;
    }
    // From here on: any allocation is counted, any system call but write/exit kills us.
    uint64_t last_id = kb_audio_serving_id(rt.audio);
    while (!rt.stop.load(std::memory_order_acquire)) {
        process_block(rt, b, true);
        const uint64_t id = kb_audio_serving_id(rt.audio);
        if (id != last_id) {
            rt.serving_changes++;
            last_id = id;
        }
        rt.guarded_blocks++;
        if (rt.guarded_blocks == 20 && rt.mode == Mode::ViolateAlloc) {
            g_sink = std::malloc(64);  // deliberate: the interposer must count it
        }
        if (rt.guarded_blocks == 20 && rt.mode == Mode::ViolateSyscall) {
            syscall(SYS_getpid);  // deliberate: the filter must kill the process here
            raw_write("host: NOT KILLED by a system call under the seccomp filter\n");
        }
        rt.blocks.store(++b, std::memory_order_release);
        for (int i = 0; i < 4000; i++) __builtin_ia32_pause();  // pace without sleeping
    }
    if (rt.track) rt.track(0);
    rt.finished.store(true, std::memory_order_release);
    // Returning would run thread teardown (system calls); leave through exit(2), which the
    // filter allows. The thread's stack is not reclaimed: the process ends soon after.
    syscall(SYS_exit, 0);
}

void wait_blocks(const Realtime& rt, uint64_t n) {
    const uint64_t target = rt.blocks.load(std::memory_order_acquire) + n;
    while (rt.blocks.load(std::memory_order_acquire) < target) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
}

// Polls a ticket until the load ends, as a GUI timer would; returns the final status.
kb_ticket_status poll_ticket(kb_ticket* t, kb_status* code, std::string* message) {
    kb_ticket_status st;
    for (;;) {
        kb_error* err = nullptr;
        *code = kb_ticket_poll(t, &st, &err);
        if (err) {
            *message = kb_error_message(err);
            kb_error_free(&err);
        }
        if (st.state != KB_LOAD_PENDING) return st;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 7) {
        std::fprintf(stderr,
                     "usage: %s run|violate-alloc|violate-syscall OUT QUERIES DIM INDEX INDEX...\n",
                     argv[0]);
        return 1;
    }
    const std::string mode_name = argv[1];
    Mode mode = mode_name == "violate-alloc"     ? Mode::ViolateAlloc
                : mode_name == "violate-syscall" ? Mode::ViolateSyscall
                                                 : Mode::Run;
    const char* out_path = argv[2];
    const size_t dim = std::strtoul(argv[4], nullptr, 10);
    std::vector<std::string> files(argv + 5, argv + argc);

    std::printf("knnblend %s (header %d.%d.%d)\n", kb_version(), KB_VERSION_MAJOR,
                KB_VERSION_MINOR, KB_VERSION_PATCH);
    if (kb_version_number() != KB_VERSION_NUMBER) {
        std::fprintf(stderr, "host: library %u, header %u\n", kb_version_number(),
                     KB_VERSION_NUMBER);
        return 1;
    }
    auto track = reinterpret_cast<TrackFn>(dlsym(RTLD_DEFAULT, "kb_test_alloc_track"));
    auto counts = reinterpret_cast<CountsFn>(dlsym(RTLD_DEFAULT, "kb_test_alloc_counts"));
    if (!track || !counts) {
        std::fprintf(stderr, "host: the allocation interposer is not loaded (LD_PRELOAD)\n");
        return 1;
    }

    // Queries: little-endian f32 rows of `dim`.
    std::vector<float> queries;
    {
        FILE* f = std::fopen(argv[3], "rb");
        if (!f) return std::perror("queries"), 1;
        float v;
        while (std::fread(&v, 4, 1, f) == 1) queries.push_back(v);
        std::fclose(f);
    }
    const size_t nq = dim ? queries.size() / dim : 0;
    if (nq <= kFrames) {
        std::fprintf(stderr, "host: need more than %zu queries\n", kFrames);
        return 1;
    }
    FILE* out = std::fopen(out_path, "w");
    if (!out) return std::perror("out"), 1;

    // 1. The index API on its own: open, inspect, search, block search, blend.
    kb_searcher* searcher = nullptr;
    CHECK(kb_searcher_new(&searcher, &err_), "kb_searcher_new");
    for (size_t i = 0; i < files.size(); i++) {
        kb_index* index = nullptr;
        CHECK(kb_index_open(files[i].c_str(), KB_OPEN_PREFAULT, &index, &err_), "kb_index_open");
        kb_index_info info;
        kb_index_get_info(index, &info);
        char features[64];
        size_t needed = 0;
        kb_index_features(index, features, sizeof features, &needed);
        char type[128];
        kb_index_describe(index, type, sizeof type, &needed);
        std::printf("index %zu: %s: %zu x %zu, %zu lists, %s %s, features \"%s\"\n", i,
                    files[i].c_str(), info.ntotal, info.dim, info.nlist,
                    info.kind == KB_FILE_FAISS ? "faiss" : "kbi", type, features);
        if (info.index_type == KB_INDEX_IVF_PQ_FASTSCAN) {
            std::printf("  IVF-PQ FastScan: M %zu, %u bits, %s, %s (k_factor %g)\n", info.pq_m,
                        info.pq_nbits, info.pq_by_residual ? "by residual" : "direct",
                        info.refined ? "refined" : "not refined", info.k_factor);
        }
        // A PQ index needs a searcher sized for it (kb_searcher_new: up to 1024 dimensions).
        if (!kb_searcher_fits(searcher, index, kK, 2)) {
            std::fprintf(stderr, "host: %s does not fit the searcher\n", files[i].c_str());
            return 1;
        }
        std::fprintf(out, "index %zu %s\n", i, files[i].c_str());
        kb_neighbour nb[KB_MAX_K];
        for (size_t q = 0; q < nq; q++) {
            size_t n = 0;
            CHECK(kb_search(searcher, index, &queries[q * dim], dim, kK, 1, nb, KB_MAX_K, &n),
                  "kb_search");
            std::fprintf(out, "search %zu %zu %zu", i, q, n);
            for (size_t j = 0; j < n; j++) {
                uint32_t bits;
                std::memcpy(&bits, &nb[j].distance, 4);
                std::fprintf(out, " %" PRId64 ":%08" PRIx32, nb[j].id, bits);
            }
            std::fprintf(out, "\n");
        }
        std::vector<kb_neighbour> block(nq * kK);
        std::vector<size_t> found(nq);
        CHECK(kb_search_block(searcher, index, queries.data(), nq, dim, kK, 2, block.data(),
                              block.size(), found.data()),
              "kb_search_block");
        for (size_t q = 0; q < nq; q++) {
            std::fprintf(out, "sblock %zu %zu %zu", i, q, found[q]);
            for (size_t j = 0; j < found[q]; j++) {
                uint32_t bits;
                std::memcpy(&bits, &block[q * kK + j].distance, 4);
                std::fprintf(out, " %" PRId64 ":%08" PRIx32, block[q * kK + j].id, bits);
            }
            std::fprintf(out, "\n");
        }
        std::vector<float> blended(dim);
        for (size_t q = 0; q < nq; q++) {
            CHECK(kb_blend(searcher, index, &queries[q * dim], dim, kK, 1, kRatio, blended.data(),
                           dim, nullptr),
                  "kb_blend");
            std::fprintf(out, "blend %zu %zu", i, q);
            hex_floats(out, blended.data(), dim);
            std::fprintf(out, "\n");
        }
        kb_index_free(&index);
    }
    kb_searcher_free(&searcher);

    // 2. The live runtime, as a plugin holds it.
    kb_live_config config = kb_live_config_default();
    config.slots = kSlots;
    config.max_dim = dim;
    config.require_dim = dim;
    config.crossfade_seconds = 0.02f;
    config.frame_period_seconds = 0.005f;
    kb_controller* control = nullptr;
    kb_audio* audio = nullptr;
    CHECK(kb_live_new(&config, &control, &audio, &err_), "kb_live_new");
    std::map<uint64_t, size_t> file_of;  // index id -> file number

    kb_ticket* first = nullptr;
    CHECK(kb_controller_load(control, 0, files[0].c_str(), &first, &err_), "kb_controller_load");
    kb_status code;
    std::string message;
    kb_ticket_status st = poll_ticket(first, &code, &message);
    kb_ticket_free(&first);
    if (st.state != KB_LOAD_PUBLISHED) {
        std::fprintf(stderr, "host: first load: %s\n", message.c_str());
        return 4;
    }
    file_of[st.index.id] = 0;

    Realtime rt;
    rt.mode = mode;
    rt.audio = audio;
    rt.queries = queries.data();
    rt.nqueries = nq;
    rt.dim = dim;
    rt.track = track;
    rt.frame_out.assign(kFrames * dim, 0.0f);
    rt.block_out.assign(kFrames * dim, 0.0f);
    rt.records.assign(kRecords * 2 * kFrames * dim, 0.0f);
    std::thread audio_thread(realtime_thread, &rt);
    audio_thread.detach();  // it leaves through exit(2), see realtime_thread
    wait_blocks(rt, kWarmupBlocks + 4);

    // 3. The message thread swaps indexes among the slots while the realtime thread runs.
    int loads = 0, publishes = 0, unloads = 0, failures = 0;
    for (int i = 0; i < 30; i++) {
        const size_t f = static_cast<size_t>(i) % files.size();
        const size_t slot = static_cast<size_t>(i * 7 + 1) % kSlots;
        switch (i % 5) {
            case 0:
            case 1:
            case 3: {  // a background load, followed through its ticket
                kb_ticket* t = nullptr;
                CHECK(kb_controller_load(control, slot, files[f].c_str(), &t, &err_),
                      "kb_controller_load");
                st = poll_ticket(t, &code, &message);
                kb_ticket_free(&t);
                if (st.state == KB_LOAD_PUBLISHED) file_of[st.index.id] = f, loads++;
                rt.active_slot.store(slot, std::memory_order_relaxed);
                break;
            }
            case 2: {  // opened by the host, published on this thread
                kb_index* index = nullptr;
                CHECK(kb_index_open(files[f].c_str(), 0, &index, &err_), "kb_index_open");
                CHECK(kb_controller_publish(control, slot, &index, nullptr, &err_),
                      "kb_controller_publish");
                kb_slot_status ss;
                CHECK(kb_controller_status(control, slot, &ss, &err_), "kb_controller_status");
                file_of[ss.index.id] = f;
                publishes++;
                rt.active_slot.store(slot, std::memory_order_relaxed);
                break;
            }
            default: {  // empty a slot other than the active one
                const size_t active = rt.active_slot.load(std::memory_order_relaxed);
                CHECK(kb_controller_unload(control, (active + 1) % kSlots, &err_),
                      "kb_controller_unload");
                unloads++;
            }
        }
        wait_blocks(rt, 6);
    }
    // A load that fails: the slot keeps serving, the ticket says why.
    {
        kb_ticket* t = nullptr;
        CHECK(kb_controller_load(control, 0, "/nonexistent/voice.kbi", &t, &err_),
              "kb_controller_load");
        st = poll_ticket(t, &code, &message);
        kb_ticket_free(&t);
        std::printf("failed load (expected): %s: %s\n", kb_status_str(code), message.c_str());
        if (st.state == KB_LOAD_FAILED && code == KB_ERR_IO) failures++;
    }
    wait_blocks(rt, 6);
    kb_telemetry tel;
    CHECK(kb_controller_telemetry(control, &tel, &err_), "kb_controller_telemetry");

    rt.stop.store(true, std::memory_order_release);
    while (!rt.finished.load(std::memory_order_acquire)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }

    unsigned long c[kAllocKinds] = {};
    counts(c);
    unsigned long total = 0;
    std::printf("rt allocations:");
    for (int k = 0; k < kAllocKinds; k++) {
        std::printf(" %s=%lu", kAllocNames[k], c[k]);
        total += c[k];
    }
    std::printf("\n");
    std::printf(
        "rt: %" PRIu64 " blocks under %s, %" PRIu64 " crossfading, %" PRIu64
        " changes of the serving index, %" PRIu64 " errors, %zu records\n",
        rt.guarded_blocks, rt.filtered ? "the seccomp filter" : "no filter", rt.fading_blocks,
        rt.serving_changes, rt.errors, rt.nrecords);
    std::printf("control: %d loads, %d publishes, %d unloads, %d failed load; telemetry: %" PRIu64
                " blocks, %" PRIu64 " queries, max block %" PRIu64 " ns\n",
                loads, publishes, unloads, failures, tel.blocks, tel.queries, tel.max_block_ns);

    // 4. The realtime thread's outputs, named by the file that served them.
    for (size_t r = 0; r < rt.nrecords; r++) {
        auto it = file_of.find(rt.record_id[r]);
        if (it == file_of.end()) {
            std::fprintf(stderr, "host: unknown serving id %" PRIu64 "\n", rt.record_id[r]);
            return 4;
        }
        const float* rec = &rt.records[r * 2 * kFrames * dim];
        std::fprintf(out, "live %zu %zu %zu frame", it->second, rt.record_offset[r], kFrames);
        hex_floats(out, rec, kFrames * dim);
        std::fprintf(out, " block");
        hex_floats(out, rec + kFrames * dim, kFrames * dim);
        std::fprintf(out, "\n");
    }
    std::fclose(out);

    // 5. Teardown off the realtime thread; every index is released.
    kb_audio_free(&audio);
    size_t released = 0;
    kb_controller_collect(control, &released);
    const size_t alive = kb_controller_indexes_alive(control);
    kb_controller_free(&control);
    std::printf("teardown: %zu indexes alive after collect; audio %s, control %s\n", alive,
                audio ? "set" : "NULL", control ? "set" : "NULL");

    if (total != 0) {
        std::fprintf(stderr, "host: %lu heap calls on the realtime thread\n", total);
        return 3;
    }
    if (rt.errors != 0 || alive != 0 || failures != 1) return 4;
    return 0;
}
