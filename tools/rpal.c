/* rpal: the command. Lists, inspects and cleans up what librpal creates.
 * Every figure printed for a human also has a --json form. Every error
 * names what was wrong and, where it can, how to put it right; a word the
 * command does not know is named, never answered with the whole usage. */
#include "rpal.h"
#include "json.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

/* ---- the commands' texts ---- */

static const char *usage_text =
    "usage: rpal COMMAND [ARGS]       (rpal COMMAND --help: one command in full)\n"
    "\n"
    "Regions: named memory at the same address in every process that attaches it\n"
    "  rpal region create NAME --size SIZE [--mode MODE] [--transient] [--empty]\n"
    "                     [--huge] [--json]\n"
    "  rpal region info NAME [--json]     header, attached processes and layout\n"
    "  rpal region rm [-r] NAME...        remove regions (-r: a directory and\n"
    "                                     every region in it)\n"
    "What is there, and what dead processes left behind\n"
    "  rpal ls [--json]        every region: name, size, base, mode, creator,\n"
    "                          attached live processes; every domain member:\n"
    "                          slot, pid, services, whom it shares with\n"
    "  rpal stat [--json]      every channel and upgraded connection of every\n"
    "                          member: messages, wake-ups sent and not needed,\n"
    "                          sleeps, spins, yields, the spin budget\n"
    "  rpal gc [--json]        remove what belongs only to dead processes\n"
    "Measuring and checking\n"
    "  rpal bench NAME [ARGS]  run a benchmark: paper, call, load, apps, heap,\n"
    "                          pagetables, regionchange, pkeys (rpal bench --help)\n"
    "  rpal run [--domain NAME] [--] PROGRAM [ARGS]\n"
    "                          run an unmodified program: its Unix-socket\n"
    "                          connections to other programs under rpal run\n"
    "                          go through rpal's rings\n"
    "  rpal chaos [ARGS]       kill peers at random points; count hangs,\n"
    "                          crashes, leaks and corrupt replies\n"
    "  rpal version [--json]   the library's version\n"
    "  rpal help [COMMAND]     this text, or one command's\n"
    "\n"
    "The namespace directory is $RPAL_DIR, or /dev/shm/rpal; keep it on tmpfs.\n"
    "See rpal(1), and rpal(7) for what regions, domains and channels are.\n";

static const char *const name_rules =
    "NAME: components of 1 to 64 characters from A-Z a-z 0-9 _ . -, separated\n"
    "by '/', none starting with '.'; 200 bytes at most; relative to the\n"
    "namespace directory.\n";

struct cmd {
    const char *name;  /* "region create" */
    const char *usage; /* after "usage: " */
    const char *help;  /* what it does and its options */
};

static const struct cmd cmds[] = {
    {"region create",
     "rpal region create NAME --size SIZE [--mode MODE] [--transient] [--empty] [--huge] [--json]",
     "Create the region NAME of SIZE bytes and print its address (with --json,\n"
     "its description, as region info --json gives it). Missing directories of\n"
     "NAME are made.\n"
     "  --size SIZE   a positive multiple of 4096 bytes; a K, M, G or T suffix\n"
     "                counts in powers of 1024 (64K, 1G)\n"
     "  --mode MODE   permission bits, octal, at most 0777 (default 0600; the\n"
     "                umask does not apply)\n"
     "  --transient   rpal gc removes it once no live process maps it\n"
     "  --empty       address space only, every page PROT_NONE, until\n"
     "                rpal_region_map() places objects in it\n"
     "  --huge        2 MiB pages on hugetlbfs ($RPAL_HUGE_DIR, or the one\n"
     "                mounted), SIZE a multiple of 1G: the processes that\n"
     "                attach it share its page tables\n"
     "  --json        print the region's description as JSON\n"},
    {"region info", "rpal region info NAME [--json]",
     "Describe the region NAME without attaching it: size, base, mode, owner,\n"
     "creator (alive or dead), the live processes that map it, and its layout.\n"
     "  --json        one JSON object\n"},
    {"region rm", "rpal region rm [-r] NAME...",
     "Remove the regions named; processes that have one attached keep their\n"
     "mapping. Directories that the removal leaves empty are removed too.\n"
     "  -r, --recursive   NAME may be a directory: remove every region in it\n"
     "                    that you may see, then its empty directories\n"},
    {"region", "rpal region create|info|rm ...",
     "Named regions: memory at the same address in every process that attaches\n"
     "it. rpal region create --help, rpal region info --help and\n"
     "rpal region rm --help say more.\n"},
    {"ls", "rpal ls [--json]",
     "List every region the caller may see (name, size, base, mode, owner,\n"
     "creator, attached live processes), then every live member of every\n"
     "domain (slot, base, pid, owner, services, the slots it shares with).\n"
     "  --json        one JSON object: dir, regions, members\n"},
    {"stat", "rpal stat [--json]",
     "List every channel end and upgraded connection of every live member: the\n"
     "messages it sent and received, wake-ups sent and not needed, sleeps,\n"
     "waits a spin ended, yields, time spent spinning, the spin budget.\n"
     "  --json        one JSON object: dir, channels\n"},
    {"gc", "rpal gc [--json]",
     "Remove what belongs only to dead processes: transient regions whose\n"
     "creator died and that no live process maps, address reservations and\n"
     "lock files left by dead creators, slot claims of dead domain members,\n"
     "sockets of dead services. Prints one line per item removed.\n"
     "  --json        one JSON object: removed, count\n"},
    {"bench", "rpal bench NAME [ARGS]     (rpal bench NAME --help: its options)",
     "Run a benchmark (the one beside the command in the build tree, else the\n"
     "installed one in PREFIX/libexec/rpal):\n"
     "  apps          unmodified Redis, PostgreSQL, memcached: plain against\n"
     "                rpal run (ops/s, latency, CPU per op)\n"
     "  paper         the RPAL paper's measurement: epoll + Unix socket against\n"
     "                rpal, 1,000,000 messages each (--pidns: also with the\n"
     "                server in a pid namespace of its own, as in a container)\n"
     "  call          a call between two processes over every common transport\n"
     "  load          latency and CPU per message against load: uds-epoll,\n"
     "                rpal-compat, rpal-call\n"
     "  heap          rpal_malloc against glibc's malloc\n"
     "  pagetables    page tables of N processes, 4 KiB pages against huge\n"
     "  regionchange  latency of a layout change for 1, 8, 64 sharers\n"
     "  pkeys         what an access window costs (rpal_peer_access_begin/end)\n"},
    {"run", "rpal run [--domain NAME] [--] PROGRAM [ARGS...]",
     "Run PROGRAM, unmodified, with librpal-run.so preloaded: each connected\n"
     "Unix stream socket it makes with connect() or accept() whose other end is\n"
     "a process also under rpal run (in the same domain) moves to rpal's rings\n"
     "at its first I/O; every other descriptor, and every connection to a\n"
     "process not under rpal run, behaves as without it. See docs/run.md.\n"
     "  --domain NAME  the domain to join (default: \"default\"); both ends\n"
     "                 must name the same one\n"
     "Environment: RPAL_RUN_LOG=FILE appends one line per connection upgraded\n"
     "(up), left to the kernel (plain) and closed (with its message counts);\n"
     "RPAL_RUN_HELLO_MS bounds a blocking call's wait for the other end's hello\n"
     "(default 10000); RPAL_DIR, RPAL_SPIN_US, RPAL_FOLLOW as for every rpal\n"
     "program (rpal run sets RPAL_FOLLOW=0 unless it is set).\n"},
    {"chaos", "rpal chaos [--trials N] [--seed S] [--from I] [--kind KIND] [--json] [-v]",
     "Kill peers at random points and count hangs, crashes, leaks and corrupt\n"
     "replies among the survivors (rpal chaos --help: its options in full).\n"},
    {"version", "rpal version [--json]",
     "Print the version of the library the command uses.\n"
     "  --json        {\"version\":\"MAJOR.MINOR.PATCH\"}\n"},
    {"help", "rpal help [COMMAND]", "Print the commands, or one command in full.\n"},
};

static const struct cmd *find_cmd(const char *name)
{
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmds[i].name, name))
            return &cmds[i];
    return NULL;
}

/* `rpal CMD --help`: to F (stdout: exit status 0). */
static int help_to(FILE *f, const struct cmd *c)
{
    fprintf(f, "usage: %s\n\n%s", c->usage, c->help);
    if (!strncmp(c->name, "region", 6))
        fprintf(f, "%s", name_rules);
    return 0;
}

static int help(const struct cmd *c)
{
    return help_to(stdout, c);
}

/* A usage error: what was wrong, and where to read more. Exit status 2. */
static int usage_error(const char *cmd, const char *fmt, const char *word)
{
    fprintf(stderr, "rpal%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    fprintf(stderr, fmt, word);
    fprintf(stderr, " (rpal %s%s--help)\n", cmd ? cmd : "", cmd ? " " : "");
    return 2;
}

/* An operation that failed: "rpal: CMD NAME: reason", then HINT if any. */
static int fail_hint(const char *what, const char *name, int err, const char *hint)
{
    fprintf(stderr, "rpal: %s%s%s: %s\n", what, name ? " " : "", name ? name : "",
            rpal_strerror(err));
    if (hint && *hint)
        fprintf(stderr, "rpal: %s\n", hint);
    return 1;
}

static int fail(const char *what, const char *name, int err)
{
    return fail_hint(what, name, err, NULL);
}

/* ---- the words of one command ---- */

enum { O_JSON, O_SIZE, O_MODE, O_TRANSIENT, O_EMPTY, O_HUGE, O_RECURSIVE, O_N };

static const struct {
    const char *name, *alias;
    int value; /* takes a value */
} optdef[O_N] = {
    [O_JSON] = {"--json", NULL, 0},       [O_SIZE] = {"--size", NULL, 1},
    [O_MODE] = {"--mode", NULL, 1},       [O_TRANSIENT] = {"--transient", NULL, 0},
    [O_EMPTY] = {"--empty", NULL, 0},     [O_HUGE] = {"--huge", NULL, 0},
    [O_RECURSIVE] = {"--recursive", "-r", 0},
};

#define MAX_OPERANDS 64

struct words {
    int set[O_N];          /* options given */
    const char *val[O_N];  /* their values */
    const char *operand[MAX_OPERANDS];
    int n;
};

/* Sort ARGV into the options ALLOWED (a mask of 1 << O_*) and at most MAX
 * operands. Options may come anywhere, as --opt VALUE or --opt=VALUE; "--"
 * ends them. Returns 0, 1 after printing CMD's help (--help, -h), or 2
 * after naming what was wrong. */
static int parse(const char *cmd, int argc, char **argv, unsigned allowed, int max,
                 struct words *w)
{
    memset(w, 0, sizeof *w);
    int options = 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (options && (!strcmp(a, "--help") || !strcmp(a, "-h")))
            return help(find_cmd(cmd)), 1;
        if (options && !strcmp(a, "--")) {
            options = 0;
            continue;
        }
        if (!options || a[0] != '-' || !a[1]) {
            if (w->n >= max)
                return usage_error(cmd, "unexpected argument '%s'", a);
            w->operand[w->n++] = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        int o = 0;
        while (o < O_N && !((strlen(optdef[o].name) == len && !strncmp(a, optdef[o].name, len)) ||
                            (optdef[o].alias && !strcmp(a, optdef[o].alias))))
            o++;
        if (o == O_N)
            return usage_error(cmd, "unknown option '%s'", a);
        if (!(allowed & (1u << o)))
            return usage_error(cmd, "option '%s' does not apply here", a);
        if (optdef[o].value) {
            if (!eq && i + 1 >= argc)
                return usage_error(cmd, "%s needs a value", optdef[o].name);
            w->val[o] = eq ? eq + 1 : argv[++i];
        } else if (eq) {
            return usage_error(cmd, "%s takes no value", optdef[o].name);
        }
        w->set[o] = 1;
    }
    return 0;
}

/* ---- the namespace directory ---- */

/* Say on stderr why the directory PATH (lstat'ed into ST) is not trusted
 * by the library (-EPERM: src/prim.c rpal__prim_dir_trusted), and how to
 * fix it. Returns 1 if it is not, else 0. */
static int untrusted(const char *cmd, const char *path, const struct stat *st)
{
    if (!S_ISDIR(st->st_mode))
        return 0;
    if (st->st_uid != geteuid() && st->st_uid != 0) {
        fprintf(stderr, "rpal: %s: not trusted: %s is owned by uid %u (not you, not root), who "
                        "could swap what is in it: remove it (its owner or root), or have root "
                        "make it\n", cmd, path, (unsigned)st->st_uid);
        return 1;
    }
    if ((st->st_mode & (S_IWGRP | S_IWOTH)) && !(st->st_mode & S_ISVTX)) {
        fprintf(stderr, "rpal: %s: not trusted: %s is writable by others without the sticky "
                        "bit: chmod +t %s (or go-w)\n", cmd, path, path);
        return 1;
    }
    return 0;
}

/* Report the directories of the namespace DIR that rpal refuses to trust:
 * DIR, DIR/.domains and each domain's. Their count. */
static int trust_report(const char *cmd, const char *dir)
{
    char path[PATH_MAX];
    struct stat st;
    int n = stat(dir, &st) == 0 && untrusted(cmd, dir, &st);
    snprintf(path, sizeof path, "%s/.domains", dir);
    if (lstat(path, &st) < 0)
        return n;
    n += untrusted(cmd, path, &st);
    DIR *dd = opendir(path);
    for (struct dirent *e; dd && (e = readdir(dd));) {
        char sub[PATH_MAX + 256];
        if (e->d_name[0] == '.')
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        if (lstat(sub, &st) == 0)
            n += untrusted(cmd, sub, &st);
    }
    if (dd)
        closedir(dd);
    return n;
}

/* Is the namespace directory there, and on memory? NEED: it must exist
 * (for commands that only read it). Returns 0, 1 if it does not exist yet
 * (the default one, which the first region or domain member makes), or
 * -errno after saying what is wrong. Warns when it is not on tmpfs (or
 * hugetlbfs, ramfs): the pages of regions and slots would go to a disk. */
static int ns_check(const char *cmd, int need)
{
    const char *dir = rpal_ns_dir(), *env = getenv("RPAL_DIR");
    struct stat st;
    struct statfs fs;
    if (stat(dir, &st) < 0) {
        int err = -errno;
        if (err != -ENOENT || (need && env && *env)) {
            fprintf(stderr, "rpal: %s: namespace directory %s: %s\n", cmd, dir, rpal_strerror(err));
            if (err == -ENOENT)
                fprintf(stderr, "rpal: RPAL_DIR names a directory that does not exist: "
                                "unset it (for /dev/shm/rpal) or make it first\n");
            return err;
        }
        return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "rpal: %s: namespace directory %s is not a directory (RPAL_DIR)\n", cmd,
                dir);
        return -ENOTDIR;
    }
    trust_report(cmd, dir);
    if (statfs(dir, &fs) == 0 && fs.f_type != TMPFS_MAGIC && fs.f_type != HUGETLBFS_MAGIC &&
        fs.f_type != RAMFS_MAGIC)
        fprintf(stderr, "rpal: warning: the namespace directory %s is not on tmpfs: the "
                        "pages of its regions would be written back to disk (set RPAL_DIR "
                        "to a directory under /dev/shm)\n", dir);
    return 0;
}

/* "64K", "1G", "4096": bytes, or -1 for anything else (overflow included). */
static long long parse_size(const char *s)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -1;
    int shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    }
    if (shift && (!strcasecmp(end, "iB") || !strcasecmp(end, "B")))
        end += strlen(end);
    if (*end || v > (unsigned long long)(LLONG_MAX >> shift))
        return -1;
    return (long long)(v << shift);
}

/* Why the name NAME breaks the naming rules, into WHY (empty if it does
 * not): the same rules as the library's, said in words. */
static void name_problem(const char *name, char *why, size_t n)
{
    size_t len = strlen(name), comp = 0;
    why[0] = 0;
    if (!len) {
        snprintf(why, n, "the name is empty");
        return;
    }
    if (len > RPAL_NAME_MAX) {
        snprintf(why, n, "the name has %zu bytes, more than %d", len, RPAL_NAME_MAX);
        return;
    }
    if (name[0] == '/') {
        snprintf(why, n, "'%s' is absolute: names are relative to the namespace directory "
                         "%s; drop the leading '/'", name, rpal_ns_dir());
        return;
    }
    for (size_t i = 0; i <= len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '/' || c == 0) {
            if (comp == 0) {
                snprintf(why, n, "'%s' has an empty component (a '/' at its end, or '//')",
                         name);
                return;
            }
            comp = 0;
            continue;
        }
        if (comp == 0 && c == '.') {
            snprintf(why, n, "a component of '%s' starts with '.'", name);
            return;
        }
        if (++comp > 64) {
            snprintf(why, n, "a component of '%s' is longer than 64 characters", name);
            return;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.')) {
            if (c == ' ')
                snprintf(why, n, "'%s' has a space at byte %zu: a name takes A-Z a-z 0-9 _ . - "
                                 "and '/' between components", name, i + 1);
            else if (c > ' ' && c < 127)
                snprintf(why, n, "'%s' has '%c' at byte %zu: a name takes A-Z a-z 0-9 _ . - "
                                 "and '/' between components", name, c, i + 1);
            else
                snprintf(why, n, "'%s' has the byte 0x%02x at byte %zu: a name takes A-Z "
                                 "a-z 0-9 _ . - and '/' between components", name, c, i + 1);
            return;
        }
    }
}

/* The hint for a failed region command on NAME. */
static void region_hint(const char *what, const char *name, int err, long long size,
                        const char *size_text, unsigned flags, char *hint, size_t n)
{
    hint[0] = 0;
    if (err == -EINVAL || err == -ENAMETOOLONG)
        name_problem(name, hint, n);
    if (hint[0])
        return;
    long long unit = flags & RPAL_REGION_HUGE ? 1ll << 30 : 4096;
    if (err == -EINVAL && size >= 0 && (size == 0 || size % unit)) {
        long long up = size ? (size + unit - 1) / unit * unit : unit;
        char sug[32];
        if (up % (1ll << 30) == 0)
            snprintf(sug, sizeof sug, "%lldG", up >> 30);
        else if (up % (1 << 20) == 0)
            snprintf(sug, sizeof sug, "%lldM", up >> 20);
        else
            snprintf(sug, sizeof sug, "%lldK", up >> 10);
        snprintf(hint, n, "--size %s: %s a positive multiple of %s; try --size %s", size_text,
                 flags & RPAL_REGION_HUGE ? "a huge region's size is" : "the size must be",
                 flags & RPAL_REGION_HUGE ? "1G" : "4096 (4K)", sug);
    } else if (err == -EEXIST) {
        snprintf(hint, n, "'%s' exists: rpal region info %s describes it, rpal region rm %s "
                          "removes it", name, name, name);
    } else if (err == -ENOENT) {
        snprintf(hint, n, "no region '%s' in %s (rpal ls lists them)", name, rpal_ns_dir());
    } else if (err == -EISDIR) {
        snprintf(hint, n, "'%s' is a directory, not a region: rpal region %s -r %s removes it "
                          "and every region in it", name, what, name);
    } else if (err == -ENOTDIR) {
        snprintf(hint, n, "a component of '%s' is a region, not a directory", name);
    } else if (err == -EACCES || err == -EPERM) {
        snprintf(hint, n, "the permissions of '%s' or of its directories in %s do not allow it "
                          "(ls -l there; RPAL_DIR may name a directory of your own)",
                 name, rpal_ns_dir());
    } else if (err == -ENOSPC && (flags & RPAL_REGION_HUGE)) {
        snprintf(hint, n, "too few free 2 MiB huge pages for %lld bytes (%lld needed): raise "
                          "vm.nr_hugepages (see HugePages_Free in /proc/meminfo)",
                 size, size >> 21);
    } else if (err == -EFBIG || err == -ENOSPC) {
        snprintf(hint, n, "the regions' address window is 16 TiB in all, and the namespace's "
                          "filesystem must have room (df %s)", rpal_ns_dir());
    }
}

static int region_fail(const char *what, const char *name, int err, long long size,
                       const char *size_text, unsigned flags)
{
    char hint[512], full[32];
    snprintf(full, sizeof full, "region %s", what);
    region_hint(what, name, err, size, size_text, flags, hint, sizeof hint);
    return fail_hint(full, name, err, hint);
}

static void human_size(uint64_t v, char *buf, size_t n)
{
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    double d = (double)v;
    while (d >= 1024 && u < 4) {
        d /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, n, "%llu B", (unsigned long long)v);
    else
        snprintf(buf, n, "%.*f %s", d == (double)(uint64_t)d ? 0 : 1, d, unit[u]);
}

static const char *user_name(uint32_t uid, char *buf, size_t n)
{
    struct passwd *pw = getpwuid(uid);
    if (pw)
        snprintf(buf, n, "%s", pw->pw_name);
    else
        snprintf(buf, n, "%u", uid);
    return buf;
}

/* The region's JSON object without its closing brace. */
static void print_json(const struct rpal_region_info *i)
{
    printf("{\"name\":");
    json_str(i->name);
    printf(",\"size\":%llu,\"base\":\"0x%llx\",\"mode\":\"%04o\",\"uid\":%u,"
           "\"gid\":%u,\"transient\":%s,\"huge\":%s,\"creator_pid\":%d,\"creator_uid\":%u,"
           "\"creator_alive\":%s,\"creator_other_pidns\":%s,\"created_ns\":%llu,"
           "\"over_quota\":%s,\"attached\":[",
           (unsigned long long)i->size, (unsigned long long)i->base, i->mode,
           i->uid, i->gid, (i->flags & RPAL_REGION_TRANSIENT) ? "true" : "false",
           (i->flags & RPAL_REGION_HUGE) ? "true" : "false", i->creator_pid, i->creator_uid, i->creator_alive ? "true" : "false",
           i->creator_alive == 2 ? "true" : "false", (unsigned long long)i->created_ns,
           (i->flags & RPAL_REGION_OVERQUOTA) ? "true" : "false");
    int shown = i->nattached < 16 ? i->nattached : 16;
    for (int k = 0; k < shown; k++)
        printf("%s%d", k ? "," : "", (int)i->attached[k]);
    printf("],\"nattached\":%d", i->nattached);
}

static void prot_str(int prot, char out[4])
{
    out[0] = prot & 1 ? 'r' : '-'; /* PROT_READ */
    out[1] = prot & 2 ? 'w' : '-'; /* PROT_WRITE */
    out[2] = prot & 4 ? 'x' : '-'; /* PROT_EXEC */
    out[3] = 0;
}

#define LAYOUT_MAX 128

/* The objects inside region NAME (-errno if it cannot be read). */
static int print_layout(const char *name, int json)
{
    static struct rpal_region_object o[LAYOUT_MAX];
    uint32_t gen = 0;
    int n = rpal_region_layout(name, &gen, o, LAYOUT_MAX);
    if (n < 0)
        return n;
    int shown = n < LAYOUT_MAX ? n : LAYOUT_MAX;
    char p[4];
    if (json) {
        printf(",\"generation\":%u,\"objects\":[", gen);
        for (int k = 0; k < shown; k++) {
            prot_str(o[k].prot, p);
            printf("%s{\"offset\":%llu,\"length\":%llu,\"kind\":\"%s\",\"prot\":\"%s\"",
                   k ? "," : "", (unsigned long long)o[k].offset,
                   (unsigned long long)o[k].length,
                   o[k].kind == RPAL_OBJ_FILE ? "file" : "anon", p);
            if (o[k].kind == RPAL_OBJ_FILE) {
                printf(",\"path\":");
                json_str(o[k].path);
                printf(",\"file_offset\":%llu,\"dev\":%llu,\"ino\":%llu",
                       (unsigned long long)o[k].file_offset, (unsigned long long)o[k].dev,
                       (unsigned long long)o[k].ino);
            }
            printf("}");
        }
        printf("]");
        return 0;
    }
    printf("layout:    generation %u, %d object%s%s\n", gen, n, n == 1 ? "" : "s",
           n ? "" : " (address space only)");
    if (n)
        printf("  %-14s %-14s %-5s %-4s %s\n", "OFFSET", "LENGTH", "KIND", "PROT", "FILE");
    for (int k = 0; k < shown; k++) {
        prot_str(o[k].prot, p);
        printf("  0x%-12llx 0x%-12llx %-5s %-4s", (unsigned long long)o[k].offset,
               (unsigned long long)o[k].length, o[k].kind == RPAL_OBJ_FILE ? "file" : "anon", p);
        if (o[k].kind == RPAL_OBJ_FILE)
            printf(" %s +0x%llx (ino %llu)", o[k].path[0] ? o[k].path : "(no path)",
                   (unsigned long long)o[k].file_offset, (unsigned long long)o[k].ino);
        putchar('\n');
    }
    return 0;
}

static void print_info(const struct rpal_region_info *i)
{
    char sz[32], user[64], when[64];
    time_t t = (time_t)(i->created_ns / 1000000000ull);
    struct tm tm;
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&t, &tm));
    human_size(i->size, sz, sizeof sz);
    printf("name:      %s\n", i->name);
    printf("size:      %llu (%s)\n", (unsigned long long)i->size, sz);
    printf("base:      0x%llx\n", (unsigned long long)i->base);
    printf("mode:      %04o  owner %s\n", i->mode, user_name(i->uid, user, sizeof user));
    printf("flags:     %s%s%s\n", (i->flags & RPAL_REGION_TRANSIENT) ? "transient" : "persistent",
           (i->flags & RPAL_REGION_HUGE) ? ", huge (2 MiB pages on hugetlbfs)" : "",
           (i->flags & RPAL_REGION_OVERQUOTA)
               ? ", over quota (its owner holds more than its share: others cannot attach it)"
               : "");
    printf("creator:   pid %d (%s), uid %u, %s\n", i->creator_pid,
           i->creator_alive == 2 ? "in another pid namespace" : i->creator_alive ? "alive" : "dead",
           i->creator_uid, when);
    printf("attached:  %d", i->nattached);
    int shown = i->nattached < 16 ? i->nattached : 16;
    for (int k = 0; k < shown; k++)
        printf("%s%d", k ? " " : " (pids ", (int)i->attached[k]);
    printf("%s\n", shown < i->nattached ? " ...)" : shown ? ")" : "");
}

struct ls_state {
    int json, count, regions;
    int other_pidns; /* members listed from another pid namespace */
};

static int ls_one(const struct rpal_region_info *i, void *arg)
{
    struct ls_state *s = arg;
    if (s->json) {
        printf("%s", s->count ? ",\n  " : "\n  ");
        print_json(i);
        putchar('}');
    } else {
        char sz[32], user[64], creator[48];
        if (!s->count)
            printf("%-24s %10s  %-16s %-5s %-8s %-14s %s\n", "NAME", "SIZE",
                   "BASE", "MODE", "OWNER", "CREATOR", "ATTACHED");
        human_size(i->size, sz, sizeof sz);
        snprintf(creator, sizeof creator, "%d%s", i->creator_pid,
                 i->creator_alive == 2 ? "*" : i->creator_alive ? "" : " (dead)");
        s->other_pidns += i->creator_alive == 2;
        printf("%-24s %10s  0x%-14llx %04o  %-8s %-14s %d%s\n", i->name, sz,
               (unsigned long long)i->base, i->mode,
               user_name(i->uid, user, sizeof user), creator, i->nattached,
               (i->flags & RPAL_REGION_OVERQUOTA) ? "  over quota" : "");
    }
    s->count++;
    return 0;
}

static int member_one(const struct rpal_member_info *m, void *arg)
{
    struct ls_state *s = arg;
    if (s->json) {
        printf("%s{\"domain\":", s->count ? ",\n  " : "\n  ");
        json_str(m->domain);
        printf(",\"slot\":%u,\"base\":\"0x%llx\",\"slot_size\":%llu,\"pid\":%d,"
               "\"pidns\":%llu,\"other_pidns\":%s,\"uid\":%u,\"services\":[",
               m->slot, (unsigned long long)m->base, (unsigned long long)m->slot_size,
               (int)m->pid, (unsigned long long)m->pidns, m->other_pidns ? "true" : "false",
               m->uid);
        for (unsigned i = 0; i < m->nservices; i++) {
            printf("%s", i ? "," : "");
            json_str(m->services[i]);
        }
        printf("],\"shares_with\":[");
        for (unsigned i = 0; i < m->npeers; i++)
            printf("%s%u", i ? "," : "", m->peers[i]);
        printf("]}");
    } else {
        char user[64], svc[200] = "", peers[200] = "";
        if (!s->count)
            printf("%s%-12s %5s  %-16s %-8s %-8s %-20s %s\n", s->regions ? "\n" : "",
                   "DOMAIN", "SLOT", "BASE", "PID", "OWNER", "SERVICES", "SHARES WITH (slots)");
        for (unsigned i = 0; i < m->nservices; i++)
            snprintf(svc + strlen(svc), sizeof svc - strlen(svc), "%s%s", i ? "," : "",
                     m->services[i]);
        for (unsigned i = 0; i < m->npeers && strlen(peers) < sizeof peers - 8; i++)
            snprintf(peers + strlen(peers), sizeof peers - strlen(peers), "%s%u", i ? "," : "",
                     m->peers[i]);
        /* A pid of another pid namespace is its own there, not one of ours. */
        char pid[24];
        snprintf(pid, sizeof pid, "%d%s", (int)m->pid, m->other_pidns ? "*" : "");
        s->other_pidns += m->other_pidns;
        printf("%-12s %5u  0x%-14llx %-8s %-8s %-20s %s\n", m->domain, m->slot,
               (unsigned long long)m->base, pid, user_name(m->uid, user, sizeof user),
               m->nservices ? svc : "-", m->npeers ? peers : "-");
    }
    s->count++;
    return 0;
}

struct gc_state {
    int json, count;
};

static void gc_one(const char *kind, const char *name, void *arg)
{
    struct gc_state *s = arg;
    if (s->json) {
        printf("%s{\"kind\":\"%s\",\"name\":", s->count ? "," : "", kind);
        json_str(name);
        printf("}");
    } else if (!strcmp(kind, "meta-rebuilt")) {
        printf("repaired meta %s (rewritten from its live members' records)\n", name);
    } else if (!strcmp(kind, "claim")) {
        /* Not removed, not counted: only its live member can rewrite it. */
        printf("tampered claim %s (its member is alive and rewrites it when it next "
               "dispatches)\n", name);
        return;
    } else {
        printf("removed %s %s\n", kind, name);
    }
    s->count++;
}

/* The words of a command that takes --json alone: into *JSON, and with
 * NS, the namespace directory checked (ns_check) into *NS. Returns -1 to go
 * on, or the exit status (0 after --help). */
static int json_only(const char *cmd, int argc, char **argv, int *json, int *ns)
{
    struct words w;
    int rc = parse(cmd, argc, argv, 1u << O_JSON, 0, &w);
    if (rc)
        return rc == 1 ? 0 : rc;
    *json = w.set[O_JSON];
    if (ns && (*ns = ns_check(cmd, 1)) < 0)
        return 1;
    return -1;
}

static int cmd_ls(int argc, char **argv)
{
    int json, ns, rc = json_only("ls", argc, argv, &json, &ns);
    if (rc >= 0)
        return rc;
    struct ls_state s = {json, 0, 0, 0};
    if (s.json)
    {
        printf("{\"dir\":");
        json_str(rpal_ns_dir());
        printf(",\"regions\":[");
    }
    int err = rpal_region_foreach(ls_one, &s);
    if (s.json)
        printf("%s],\"members\":[", s.count ? "\n" : "");
    else if (!s.count && err == 0)
        printf("no regions in %s%s\n", rpal_ns_dir(),
               ns ? " (not made yet: the first region or domain member makes it)" : "");
    s.regions = s.count;
    s.count = 0;
    int err2 = rpal_domain_foreach(member_one, &s);
    if (s.json)
        printf("%s]}\n", s.count ? "\n" : "");
    else if (!s.count && err2 == 0)
        printf("no domain members\n");
    if (!s.json && s.other_pidns)
        printf("* in another pid namespace (a container): the pid is its own there\n");
    if (err == 0)
        err = err2;
    return err < 0 ? fail("ls", NULL, err) : 0;
}

static int cmd_gc(int argc, char **argv)
{
    int json, ns, rc = json_only("gc", argc, argv, &json, &ns);
    if (rc >= 0)
        return rc;
    struct gc_state s = {json, 0};
    if (s.json)
        printf("{\"removed\":[");
    int n = rpal_gc(gc_one, &s);
    if (s.json)
        printf("],\"count\":%d}\n", n < 0 ? s.count : n);
    else if (n == 0)
        printf("nothing to remove\n");
    return n < 0 ? fail("gc", NULL, n) : 0;
}

static int cmd_version(int argc, char **argv)
{
    int json, rc = json_only("version", argc, argv, &json, NULL);
    if (rc >= 0)
        return rc;
    if (json)
        printf("{\"version\":\"%s\"}\n", rpal_version());
    else
        printf("rpal %s\n", rpal_version());
    return 0;
}

/* ---- region create, info, rm ---- */

static int region_create(const struct words *w)
{
    const char *name = w->operand[0];
    if (!w->set[O_SIZE])
        return usage_error("region create", "%s is missing", "--size SIZE");
    long long size = parse_size(w->val[O_SIZE]);
    if (size < 0) {
        fprintf(stderr, "rpal: region create: bad size '%s': a number of bytes with an "
                        "optional K, M, G or T suffix (64K, 1G)\n", w->val[O_SIZE]);
        return 2;
    }
    unsigned mode = 0, flags = 0;
    if (w->set[O_MODE]) {
        char *end;
        unsigned long m = strtoul(w->val[O_MODE], &end, 8);
        if (*end || !*w->val[O_MODE] || m > 0777) {
            fprintf(stderr, "rpal: region create: bad mode '%s': octal permission bits, "
                            "at most 0777 (0640, 600)\n", w->val[O_MODE]);
            return 2;
        }
        mode = (unsigned)m;
    }
    flags |= w->set[O_TRANSIENT] ? RPAL_REGION_TRANSIENT : 0;
    flags |= w->set[O_EMPTY] ? RPAL_REGION_EMPTY : 0;
    flags |= w->set[O_HUGE] ? RPAL_REGION_HUGE : 0;
    if (ns_check("region create", 0) < 0)
        return 1;
    rpal_region *r;
    int err = rpal_region_create(name, (size_t)size, mode, flags, &r);
    if (err == -ENOENT) /* the namespace directory could not be made */
        return fail_hint("region create", name, err,
                         "the namespace directory (RPAL_DIR) cannot be made: its parent "
                         "directory does not exist");
    if (err < 0)
        return region_fail("create", name, err, size, w->val[O_SIZE], flags);
    unsigned long long base = (unsigned long long)(uintptr_t)rpal_region_addr(r);
    rpal_region_detach(r);
    if (!w->set[O_JSON]) {
        printf("created %s at 0x%llx, %lld bytes\n", name, base, size);
        return 0;
    }
    struct rpal_region_info info;
    if ((err = rpal_region_stat(name, &info)) < 0)
        return fail("region create (describing it)", name, err);
    print_json(&info);
    err = print_layout(name, 1);
    printf("}\n");
    return err < 0 ? fail("region create (its layout)", name, err) : 0;
}

static int region_info(const struct words *w)
{
    const char *name = w->operand[0];
    if (ns_check("region info", 1) < 0)
        return 1;
    struct rpal_region_info info;
    int err = rpal_region_stat(name, &info);
    if (err < 0)
        return region_fail("info", name, err, -1, NULL, 0);
    if (w->set[O_JSON])
        print_json(&info); /* the layout goes inside the object */
    else
        print_info(&info);
    err = print_layout(name, w->set[O_JSON]);
    if (w->set[O_JSON])
        printf("}\n");
    if (err < 0)
        return fail("region info (layout)", name, err);
    return 0;
}

/* Open the directory DIR (a valid name, or "" for the root) beneath the
 * namespace, following no symbolic link: a descriptor, or -errno. */
static int open_beneath(const char *dir)
{
    int fd = open(rpal_ns_dir(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char comp[RPAL_NAME_MAX + 1];
    for (const char *p = dir; *p;) {
        size_t n = strcspn(p, "/");
        memcpy(comp, p, n);
        comp[n] = 0;
        int next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int e = errno;
        close(fd);
        if (next < 0)
            return -e;
        fd = next;
        p += n + (p[n] == '/');
    }
    return fd;
}

/* Remove the directory NAME if it is empty: 0, or -errno. */
static int rmdir_name(const char *name)
{
    char parent[RPAL_NAME_MAX + 1];
    snprintf(parent, sizeof parent, "%s", name);
    char *slash = strrchr(parent, '/');
    const char *base = slash ? slash + 1 : name;
    if (slash)
        *slash = 0;
    else
        parent[0] = 0;
    int fd = open_beneath(parent);
    if (fd < 0)
        return fd;
    int err = unlinkat(fd, base, AT_REMOVEDIR) < 0 ? -errno : 0;
    close(fd);
    return err;
}

/* After NAME went: remove the directories above it that are now empty
 * (create makes them as needed), up to the first that is not. */
static void rmdir_parents(const char *name)
{
    char dir[RPAL_NAME_MAX + 1];
    snprintf(dir, sizeof dir, "%s", name);
    for (char *slash; (slash = strrchr(dir, '/'));) {
        *slash = 0;
        if (rmdir_name(dir) < 0)
            break;
    }
}

/* The regions below a directory, for rm -r. */
struct below {
    const char *dir;
    size_t len, n, cap;
    char (*names)[RPAL_NAME_MAX + 1];
};

static int below_one(const struct rpal_region_info *i, void *arg)
{
    struct below *b = arg;
    if (strncmp(i->name, b->dir, b->len) || i->name[b->len] != '/')
        return 0;
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        void *p = realloc(b->names, cap * sizeof *b->names);
        if (!p)
            return -ENOMEM;
        b->names = p;
        b->cap = cap;
    }
    snprintf(b->names[b->n++], sizeof *b->names, "%s", i->name);
    return 0;
}

/* Remove the empty directories in the directory DIRFD, deepest first:
 * 0, or the first error (-ENOTEMPTY: something that is not a region of
 * ours is left in one, whose name goes to LEFT). */
static int rmdir_tree(int dirfd, const char *path, char *left, size_t n)
{
    DIR *d = fdopendir(dirfd);
    if (!d) {
        close(dirfd);
        return -errno;
    }
    int err = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
            continue;
        int sub = openat(dirfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        char subpath[2 * RPAL_NAME_MAX];
        snprintf(subpath, sizeof subpath, "%s/%s", path, de->d_name);
        int e = sub < 0 ? -errno : rmdir_tree(sub, subpath, left, n);
        if (e == 0 && unlinkat(dirfd, de->d_name, AT_REMOVEDIR) < 0) {
            e = -errno;
            snprintf(left, n, "%s", subpath);
        }
        if (e < 0 && !err)
            err = e;
    }
    closedir(d);
    return err;
}

/* rm -r NAME: a region, or a directory with every region in it. */
static int rm_tree(const char *name)
{
    int err = rpal_region_unlink(name);
    if (err != -EISDIR) {
        if (err == 0)
            rmdir_parents(name);
        return err < 0 ? region_fail("rm", name, err, -1, NULL, 0) : 0;
    }
    struct below b = {name, strlen(name), 0, 0, NULL};
    err = rpal_region_foreach(below_one, &b);
    if (err < 0) {
        free(b.names);
        return fail("region rm -r", name, err);
    }
    int rc = 0;
    for (size_t i = 0; i < b.n; i++)
        if ((err = rpal_region_unlink(b.names[i])) < 0 && err != -ENOENT)
            rc = region_fail("rm", b.names[i], err, -1, NULL, 0);
    free(b.names);
    int fd = open_beneath(name);
    char left[2 * RPAL_NAME_MAX] = "";
    err = fd < 0 ? fd : rmdir_tree(fd, name, left, sizeof left);
    if (err == 0 && (err = rmdir_name(name)) < 0)
        snprintf(left, sizeof left, "%s", name);
    if (err == -ENOTEMPTY || err == -EEXIST) {
        fprintf(stderr, "rpal: region rm -r %s: %s is not empty: it holds files that are not "
                        "regions you may see (look with ls -la %s/%s)\n", name, left,
                rpal_ns_dir(), left);
        return 1;
    }
    if (err < 0)
        return fail("region rm -r", name, err);
    rmdir_parents(name);
    return rc;
}

static int region_rm(const struct words *w)
{
    if (ns_check("region rm", 1) < 0)
        return 1;
    int rc = 0;
    for (int i = 0; i < w->n; i++) {
        const char *name = w->operand[i];
        if (w->set[O_RECURSIVE]) {
            rc |= rm_tree(name);
            continue;
        }
        int err = rpal_region_unlink(name);
        if (err < 0)
            rc = region_fail("rm", name, err, -1, NULL, 0);
        else
            rmdir_parents(name);
    }
    return rc;
}

static int cmd_region(int argc, char **argv)
{
    if (argc < 1)
        return usage_error("region", "%s is missing: create, info or rm", "a subcommand");
    const char *sub = argv[0];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h"))
        return help(find_cmd("region"));
    static const struct {
        const char *name;
        unsigned allowed;
        int min, max; /* operands */
        int (*run)(const struct words *w);
    } subs[] = {
        {"create", 1u << O_SIZE | 1u << O_MODE | 1u << O_TRANSIENT | 1u << O_EMPTY |
                       1u << O_HUGE | 1u << O_JSON, 1, 1, region_create},
        {"info", 1u << O_JSON, 1, 1, region_info},
        {"rm", 1u << O_RECURSIVE, 1, MAX_OPERANDS, region_rm},
    };
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        if (strcmp(sub, subs[i].name))
            continue;
        char cmd[32];
        snprintf(cmd, sizeof cmd, "region %s", sub);
        struct words w;
        int rc = parse(cmd, argc - 1, argv + 1, subs[i].allowed, subs[i].max, &w);
        if (rc)
            return rc == 1 ? 0 : rc;
        if (w.n < subs[i].min)
            return usage_error(cmd, "%s is missing", "a region NAME");
        return subs[i].run(&w);
    }
    return usage_error("region", "unknown subcommand '%s': create, info or rm", sub);
}

/* Run the helper program NAME with ARGV: found beside the command in the
 * build tree (SUBDIR/NAME, SUBDIR "" for the directory itself) or in
 * PREFIX/libexec/rpal/NAME. Returns only on failure. */
static int exec_helper(const char *what, const char *subdir, const char *name, char **argv)
{
    char self[PATH_MAX], path[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return fail(what, name, -errno);
    self[n] = 0;
    char *slash = strrchr(self, '/');
    *slash = 0;
    snprintf(path, sizeof path, "%s/%s%s%s", self, subdir, *subdir ? "/" : "", name);
    if (access(path, X_OK) != 0)
        snprintf(path, sizeof path, "%s/../libexec/rpal/%s", self, name);
    if (access(path, X_OK) != 0) {
        fprintf(stderr, "rpal: no %s '%s' (looked in %s%s%s and %s/../libexec/rpal)%s\n", what,
                name, self, *subdir ? "/" : "", subdir, self,
                *subdir ? "; rpal bench --help lists them" : "");
        return 2;
    }
    execv(path, argv);
    return fail(what, path, -errno);
}

/* The interposer: beside the command (the build tree) or in
 * PREFIX/libexec/rpal. */
static int run_lib(char *path, size_t size)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -errno;
    self[n] = 0;
    *strrchr(self, '/') = 0;
    snprintf(path, size, "%s/librpal-run.so", self);
    if (access(path, R_OK) == 0)
        return 0;
    snprintf(path, size, "%s/../libexec/rpal/librpal-run.so", self);
    if (access(path, R_OK) == 0)
        return 0;
    fprintf(stderr, "rpal run: no librpal-run.so beside the command (%s) nor in %s/../libexec/rpal:"
            " build it with make (not made by the sanitizer or static builds)\n", self, self);
    return -ENOENT;
}

/* `rpal run [--domain NAME] [--] PROGRAM [ARGS]`: exec PROGRAM with the
 * interposer preloaded (after what LD_PRELOAD already holds). */
static int cmd_run(int argc, char **argv)
{
    const char *domain = NULL;
    int i = 0;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--")) {
            i++;
            break;
        }
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return help(find_cmd("run"));
        if (!strcmp(argv[i], "--domain") && i + 1 < argc) {
            domain = argv[++i];
            continue;
        }
        return usage_error("run", !strcmp(argv[i], "--domain") ? "--domain needs a NAME%s"
                                                                : "unknown option '%s'",
                           !strcmp(argv[i], "--domain") ? "" : argv[i]);
    }
    if (i >= argc)
        return usage_error("run", "a PROGRAM to run is missing%s", "");
    int err;
    if (domain && (!*domain || *domain == '.' || strlen(domain) > 64 ||
                   strspn(domain, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789_.-") != strlen(domain)))
        return usage_error("run", "'%s' is not a domain NAME (1 to 64 of A-Z a-z 0-9 _ . -,"
                                  " not starting with '.')", domain);
    char lib[PATH_MAX + 64], pre[2 * PATH_MAX + 80];
    if (run_lib(lib, sizeof lib) < 0)
        return 2;
    const char *old = getenv("LD_PRELOAD");
    snprintf(pre, sizeof pre, "%s%s%s", old && *old ? old : "", old && *old ? ":" : "", lib);
    setenv("LD_PRELOAD", pre, 1);
    if (domain)
        setenv("RPAL_RUN_DOMAIN", domain, 1);
    /* Servers of many connections: a waiter that follows its peer's CPU
     * crams both onto one (measured: docs/run.md). Unless asked. */
    setenv("RPAL_FOLLOW", "0", 0);
    execvp(argv[i], argv + i);
    err = -errno;
    fprintf(stderr, "rpal run: %s: %s\n", argv[i], rpal_strerror(err));
    return err == -ENOENT ? 127 : 126;
}

/* `rpal stat`: every channel's and connection's counters, the answer to
 * "why does this connection cost what it costs". */
struct stat_state {
    int json, count;
    int other_pidns; /* rows naming a process of another pid namespace */
};

static const char *const stat_kind[] = {"?", "caller", "service", "conn"};
static const char *const stat_state_name[] = {"running", "spinning", "yielding", "asleep"};

static int stat_one(const struct rpal_stats_entry *e, void *arg)
{
    struct stat_state *st = arg;
    const struct rpal_stats *s = &e->s;
    if (st->json) {
        printf("%s{\"domain\":", st->count ? ",\n  " : "\n  ");
        json_str(e->domain);
        printf(",\"slot\":%u,\"pid\":%d,\"other_pidns\":%s,\"kind\":\"%s\",\"peer_slot\":%u,"
               "\"peer_pid\":%d,\"peer_other_pidns\":%s,",
               e->slot, (int)e->pid, e->other_pidns ? "true" : "false", stat_kind[e->kind],
               e->peer_slot, (int)e->peer_pid, e->peer_other_pidns ? "true" : "false");
        if (e->kind == RPAL_STATS_CONN) {
            printf("\"fd\":%d,", e->fd);
        } else {
            printf("\"service\":");
            json_str(e->service);
            putchar(',');
        }
        printf("\"state\":\"%s\",\"msgs_out\":%llu,\"bytes_out\":%llu,\"msgs_in\":%llu,"
               "\"bytes_in\":%llu,\"wakes\":%llu,\"wakes_skipped\":%llu,\"waits\":%llu,"
               "\"sleeps\":%llu,\"spin_hits\":%llu,\"yields\":%llu,\"spin_ns\":%llu,"
               "\"budget_ns\":%u}",
               stat_state_name[e->state], (unsigned long long)s->msgs_out,
               (unsigned long long)s->bytes_out, (unsigned long long)s->msgs_in,
               (unsigned long long)s->bytes_in, (unsigned long long)s->wakes,
               (unsigned long long)s->wakes_skipped, (unsigned long long)s->waits,
               (unsigned long long)s->sleeps, (unsigned long long)s->spin_hits,
               (unsigned long long)s->yields, (unsigned long long)s->spin_ns, s->budget_ns);
    } else {
        char what[80], pid[16];
        if (!st->count)
            printf("%-12s %4s %-8s %-8s %-22s %10s %10s %8s %10s %8s %10s %8s %8s %s\n",
                   "DOMAIN", "SLOT", "PID", "KIND", "PEER", "MSGS OUT", "MSGS IN", "WAKES",
                   "NO WAKE", "SLEEPS", "SPUN OK", "YIELDS", "SPIN ms", "BUDGET us");
        const char *mark = e->peer_other_pidns ? "*" : "";
        if (e->kind == RPAL_STATS_CONN)
            snprintf(what, sizeof what, "fd %d, slot %u%s", e->fd, e->peer_slot, mark);
        else
            snprintf(what, sizeof what, "%s %.14s, slot %u%s",
                     e->kind == RPAL_STATS_CALLER ? "to" : "of", e->service, e->peer_slot, mark);
        snprintf(pid, sizeof pid, "%d%s", (int)e->pid, e->other_pidns ? "*" : "");
        st->other_pidns += e->other_pidns || e->peer_other_pidns;
        printf("%-12s %4u %-8s %-8s %-22s %10llu %10llu %8llu %10llu %8llu %10llu %8llu %8.1f %.1f\n",
               e->domain, e->slot, pid, stat_kind[e->kind], what,
               (unsigned long long)s->msgs_out, (unsigned long long)s->msgs_in,
               (unsigned long long)s->wakes, (unsigned long long)s->wakes_skipped,
               (unsigned long long)s->sleeps, (unsigned long long)s->spin_hits,
               (unsigned long long)s->yields, s->spin_ns / 1e6, s->budget_ns / 1000.0);
    }
    st->count++;
    return 0;
}


static int cmd_stat(int argc, char **argv)
{
    int json, ns, rc = json_only("stat", argc, argv, &json, &ns);
    if (rc >= 0)
        return rc;
    struct stat_state st = {json, 0, 0};
    if (st.json) {
        printf("{\"dir\":");
        json_str(rpal_ns_dir());
        printf(",\"channels\":[");
    }
    int err = rpal_stats_foreach(stat_one, &st);
    if (st.json)
        printf("%s]}\n", st.count ? "\n" : "");
    else if (!st.count && err == 0)
        printf("no channels or connections in %s%s\n", rpal_ns_dir(),
               ns ? " (not made yet: the first region or domain member makes it)" : "");
    if (!st.json && st.other_pidns)
        printf("* in another pid namespace (a container): its pid is its own there\n");
    return err < 0 ? fail("stat", NULL, err) : 0;
}

/* `rpal bench NAME ARGS`: run the benchmark program NAME, which takes its
 * own options (and its --help). */
static int cmd_bench(int argc, char **argv)
{
    if (argc < 1) {
        fprintf(stderr, "rpal bench: a benchmark NAME is missing\n");
        help_to(stderr, find_cmd("bench"));
        return 2;
    }
    if (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))
        return help(find_cmd("bench"));
    if (argv[0][0] == '-')
        return usage_error("bench", "a benchmark NAME comes before its options, not '%s'",
                           argv[0]);
    if (strchr(argv[0], '/') || argv[0][0] == '.')
        return usage_error("bench", "no benchmark '%s'", argv[0]);
    return exec_helper("benchmark", "bench", argv[0], argv);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_text, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "region"))
        return cmd_region(argc - 2, argv + 2);
    if (!strcmp(cmd, "ls"))
        return cmd_ls(argc - 2, argv + 2);
    if (!strcmp(cmd, "gc"))
        return cmd_gc(argc - 2, argv + 2);
    if (!strcmp(cmd, "stat"))
        return cmd_stat(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench"))
        return cmd_bench(argc - 2, argv + 2);
    if (!strcmp(cmd, "run"))
        return cmd_run(argc - 2, argv + 2);
    if (!strcmp(cmd, "chaos")) /* a program of its own: tools/chaos.c */
        return exec_helper("chaos program", "", "chaos", argv + 1);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version"))
        return cmd_version(argc - 2, argv + 2);
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        if (argc < 3) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))
            return help(find_cmd("help"));
        /* `rpal help region create`: the words joined */
        char name[64] = "";
        for (int i = 2; i < argc && i < 4; i++)
            snprintf(name + strlen(name), sizeof name - strlen(name), "%s%s", i > 2 ? " " : "",
                     argv[i]);
        const struct cmd *c = find_cmd(name);
        if (!c || argc > 4)
            return usage_error(NULL, "no command '%s'", name);
        return help(c);
    }
    return usage_error(NULL, "unknown command '%s'", cmd);
}
