/* What the echo examples (uds_echo_*, rpal_echo_*, uv_rpal_echo) and
 * bench/paper share and what has nothing to do with the transport: the
 * clock that stamps messages, the options, errors, pinning to a CPU.
 * Everything here is static inline so that each program takes what it uses. */
#ifndef ECHO_COMMON_H
#define ECHO_COMMON_H

#include <errno.h>
#include <inttypes.h>
#include <getopt.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

/* The stamp in a message's first 8 bytes: the TSC, as the paper's sample
 * (its counter on arm64, nanoseconds elsewhere). Cycles of CPU 0 and CPU 1
 * compare where the TSC is invariant (constant_tsc, nonstop_tsc). */
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define STAMP_CLOCK "TSC"
static inline uint64_t stamp(void) { return __rdtsc(); }
#elif defined(__aarch64__)
#define STAMP_CLOCK "CNTVCT"
static inline uint64_t stamp(void)
{
    uint64_t v;
    __asm__ volatile("isb; mrs %0, cntvct_el0" : "=r"(v) : : "memory");
    return v;
}
#else
#define STAMP_CLOCK "ns"
static inline uint64_t stamp(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}
#endif

#define MAX_SIZE 65536

static struct {
    const char *path;
    uint64_t count; /* client: messages to send */
    size_t size;
    int cpu, timeout_ms, json;
} opt = { "/tmp/echo.sock", 1000000, 32, -1, 10000, 0 };

/* Prints "PROGRAM: WHAT: the error" and exits 1. ERR is a negative errno. */
static inline void fail(const char *what, int err)
{
    fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, what, strerror(-err));
    exit(1);
}

/* The result of a system call, with its error as a negative errno (the way
 * these programs pass errors, and the way rpal's calls return them). */
static inline long sys(long ret)
{
    return ret < 0 ? -errno : ret;
}

static inline void parse_args(int argc, char **argv, int client)
{
    static const struct option longopts[] = {
        { "socket", required_argument, NULL, 's' },
        { "count", required_argument, NULL, 'n' },
        { "size", required_argument, NULL, 'z' },
        { "cpu", required_argument, NULL, 'c' },
        { "timeout", required_argument, NULL, 't' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "s:n:z:c:t:jh", longopts, NULL)) != -1) {
        switch (c) {
        case 's': opt.path = optarg; break;
        case 'z': opt.size = strtoul(optarg, NULL, 0); break;
        case 'c': opt.cpu = atoi(optarg); break;
        case 't': opt.timeout_ms = atoi(optarg); break;
        case 'j': opt.json = 1; break;
        case 'n':
            if (client) {
                opt.count = strtoull(optarg, NULL, 0);
                break;
            }
            /* fall through - a server takes no --count */
        default:
            fprintf(stderr, "usage: %s [--socket PATH]%s [--size BYTES] [--cpu N] "
                    "[--timeout MS] [--json]\n", program_invocation_short_name,
                    client ? " [--count N]" : "");
            exit(c == 'h' ? 0 : 2);
        }
    }
    if (optind < argc || opt.size < sizeof(uint64_t) || opt.size > MAX_SIZE ||
        opt.timeout_ms <= 0) {
        fprintf(stderr, "%s: %s\n", program_invocation_short_name, optind < argc
                ? "unexpected arguments (see --help)"
                : opt.timeout_ms <= 0 ? "--timeout must be positive"
                : "--size must be 8 to 65536 bytes");
        exit(2);
    }
    struct sockaddr_un sun;
    if (strlen(opt.path) >= sizeof sun.sun_path) {
        fprintf(stderr, "%s: socket path too long: %s\n", program_invocation_short_name, opt.path);
        exit(2);
    }
}

/* Runs this process on CPU only (CPU < 0: anywhere). */
static inline void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (cpu < 0)
        return;
    if (cpu >= CPU_SETSIZE)
        fail("--cpu", -EINVAL);
    CPU_SET(cpu, &set);
    int err = sys(sched_setaffinity(0, sizeof set, &set));
    if (err < 0)
        fail("--cpu", err);
}

/* The server's result: the paper's line, or with --json the same figures as
 * one JSON object. TOTAL is the sum of the one-way latencies of COUNT
 * messages, in ticks of stamp(). */
static inline void print_result(uint64_t total, uint64_t count)
{
    uint64_t avg = count ? total / count : 0;
    if (opt.json)
        printf("{\"size\":%zu,\"total_cycles\":%" PRIu64 ",\"count\":%" PRIu64
               ",\"avg_cycles\":%" PRIu64 "}\n", opt.size, total, count, avg);
    else
        printf("Message length: %zu bytes, Total TSC cycles: %" PRIu64
               ", Message count: %" PRIu64 ", Average latency: %" PRIu64 " cycles\n",
               opt.size, total, count, avg);
}

static inline double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

#endif
