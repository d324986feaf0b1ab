/* rpal: the command. Lists, inspects and cleans up what librpal creates.
 * Every figure printed for a human also has a --json form. */
#include "rpal.h"
#include "json.h"

#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static const char *usage_text =
    "usage: rpal COMMAND [ARGS]\n"
    "\n"
    "  rpal region create NAME --size SIZE [--mode MODE] [--transient] [--empty] [--huge]\n"
    "  rpal region info NAME [--json]   header, attached processes and layout\n"
    "  rpal region rm NAME\n"
    "  rpal ls [--json]        every region: name, size, base, mode, creator,\n"
    "                          attached live processes; every domain member:\n"
    "                          slot, pid, services, whom it shares with\n"
    "  rpal gc [--json]        remove what belongs only to dead processes\n"
    "  rpal stat [--json]      every channel and upgraded connection of every\n"
    "                          member: messages, wake-ups sent and not needed,\n"
    "                          sleeps, spins, yields, the spin budget\n"
    "  rpal bench NAME [ARGS]  run a benchmark: paper (the RPAL paper's\n"
    "                          measurement: epoll + Unix socket against rpal),\n"
    "                          call (transports compared), load (latency and\n"
    "                          CPU per message against load: uds-epoll,\n"
    "                          rpal-compat, rpal-call), heap (rpal_malloc\n"
    "                          against glibc), regionchange (latency of a\n"
    "                          layout change for 1, 8, 64 sharers), pagetables\n"
    "                          (page tables of N processes, 4 KiB vs huge),\n"
    "                          pkeys (what an access window costs)\n"
    "  rpal version\n"
    "\n"
    "SIZE takes a K, M, G or T suffix (powers of 1024). MODE is octal.\n"
    "--huge: 2 MiB pages on hugetlbfs ($RPAL_HUGE_DIR, or the one mounted),\n"
    "SIZE a multiple of 1G; processes share the region's page tables.\n"
    "The namespace directory is $RPAL_DIR, or /dev/shm/rpal.\n";

static int usage(void)
{
    fputs(usage_text, stderr);
    return 2;
}

static int fail(const char *what, const char *name, int err)
{
    fprintf(stderr, "rpal: %s%s%s: %s\n", what, name ? " " : "", name ? name : "",
            rpal_strerror(err));
    return 1;
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
           "\"creator_alive\":%s,\"created_ns\":%llu,\"attached\":[",
           (unsigned long long)i->size, (unsigned long long)i->base, i->mode,
           i->uid, i->gid, (i->flags & RPAL_REGION_TRANSIENT) ? "true" : "false",
           (i->flags & RPAL_REGION_HUGE) ? "true" : "false", i->creator_pid, i->creator_uid, i->creator_alive ? "true" : "false",
           (unsigned long long)i->created_ns);
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
    printf("flags:     %s%s\n", (i->flags & RPAL_REGION_TRANSIENT) ? "transient" : "persistent",
           (i->flags & RPAL_REGION_HUGE) ? ", huge (2 MiB pages on hugetlbfs)" : "");
    printf("creator:   pid %d (%s), uid %u, %s\n", i->creator_pid,
           i->creator_alive ? "alive" : "dead", i->creator_uid, when);
    printf("attached:  %d", i->nattached);
    int shown = i->nattached < 16 ? i->nattached : 16;
    for (int k = 0; k < shown; k++)
        printf("%s%d", k ? " " : " (pids ", (int)i->attached[k]);
    printf("%s\n", shown < i->nattached ? " ...)" : shown ? ")" : "");
}

struct ls_state {
    int json, count, regions;
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
                 i->creator_alive ? "" : " (dead)");
        printf("%-24s %10s  0x%-14llx %04o  %-8s %-14s %d\n", i->name, sz,
               (unsigned long long)i->base, i->mode,
               user_name(i->uid, user, sizeof user), creator, i->nattached);
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
               "\"uid\":%u,\"services\":[",
               m->slot, (unsigned long long)m->base, (unsigned long long)m->slot_size,
               (int)m->pid, m->uid);
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
        printf("%-12s %5u  0x%-14llx %-8d %-8s %-20s %s\n", m->domain, m->slot,
               (unsigned long long)m->base, (int)m->pid, user_name(m->uid, user, sizeof user),
               m->nservices ? svc : "-", m->npeers ? peers : "-");
    }
    s->count++;
    return 0;
}

static int cmd_ls(int argc, char **argv)
{
    struct ls_state s = {0, 0, 0};
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            s.json = 1;
        else
            return usage();
    }
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
        printf("no regions in %s\n", rpal_ns_dir());
    s.regions = s.count;
    s.count = 0;
    int err2 = rpal_domain_foreach(member_one, &s);
    if (s.json)
        printf("%s]}\n", s.count ? "\n" : "");
    else if (!s.count && err2 == 0)
        printf("no domain members\n");
    if (err == 0)
        err = err2;
    return err < 0 ? fail("ls", NULL, err) : 0;
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
    } else {
        printf("removed %s %s\n", kind, name);
    }
    s->count++;
}

static int cmd_gc(int argc, char **argv)
{
    struct gc_state s = {0, 0};
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            s.json = 1;
        else
            return usage();
    }
    if (s.json)
        printf("{\"removed\":[");
    int n = rpal_gc(gc_one, &s);
    if (s.json)
        printf("],\"count\":%d}\n", n < 0 ? s.count : n);
    else if (n == 0)
        printf("nothing to remove\n");
    return n < 0 ? fail("gc", NULL, n) : 0;
}

static int cmd_region(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *sub = argv[0], *name = argv[1];
    long long size = -1;
    unsigned mode = 0, flags = 0;
    int json = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--transient")) {
            flags |= RPAL_REGION_TRANSIENT;
        } else if (!strcmp(a, "--huge")) {
            flags |= RPAL_REGION_HUGE;
        } else if (!strcmp(a, "--empty")) {
            flags |= RPAL_REGION_EMPTY;
        } else if (!strcmp(a, "--size") && i + 1 < argc) {
            size = parse_size(argv[++i]);
            if (size < 0) {
                fprintf(stderr, "rpal: bad size '%s' (a number with an optional "
                                "K, M, G or T suffix)\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--mode") && i + 1 < argc) {
            char *end;
            unsigned long m = strtoul(argv[++i], &end, 8);
            if (*end || !*argv[i] || m > 0777) {
                fprintf(stderr, "rpal: bad mode '%s' (octal, at most 0777)\n", argv[i]);
                return 2;
            }
            mode = (unsigned)m;
        } else {
            return usage();
        }
    }
    /* Each subcommand takes only its own options. */
    int is_create = !strcmp(sub, "create"), is_info = !strcmp(sub, "info");
    if ((!is_create && (size >= 0 || mode || flags)) || (!is_info && json))
        return usage();
    if (is_create) {
        if (size < 0) {
            fprintf(stderr, "rpal: region create needs --size SIZE\n");
            return 2;
        }
        rpal_region *r;
        int err = rpal_region_create(name, (size_t)size, mode, flags, &r);
        if (err < 0)
            return fail("region create", name, err);
        printf("created %s at 0x%llx, %lld bytes\n", name,
               (unsigned long long)(uintptr_t)rpal_region_addr(r), size);
        rpal_region_detach(r);
        return 0;
    }
    if (is_info) {
        struct rpal_region_info info;
        int err = rpal_region_stat(name, &info);
        if (err < 0)
            return fail("region info", name, err);
        if (json) {
            print_json(&info); /* the layout goes inside the object */
        } else {
            print_info(&info);
        }
        err = print_layout(name, json);
        if (json)
            printf("}\n");
        if (err < 0)
            return fail("region info (layout)", name, err);
        return 0;
    }
    if (!strcmp(sub, "rm")) {
        int err = rpal_region_unlink(name);
        if (err < 0)
            return fail("region rm", name, err);
        return 0;
    }
    return usage();
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
        fprintf(stderr, "rpal: no %s '%s' (looked in %s%s%s and %s/../libexec/rpal)\n", what,
                name, self, *subdir ? "/" : "", subdir, self);
        return 2;
    }
    execv(path, argv);
    return fail(what, path, -errno);
}

/* `rpal stat`: every channel's and connection's counters, the answer to
 * "why does this connection cost what it costs". */
struct stat_state {
    int json, count;
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
        printf(",\"slot\":%u,\"pid\":%d,\"kind\":\"%s\",\"peer_slot\":%u,\"peer_pid\":%d,",
               e->slot, (int)e->pid, stat_kind[e->kind], e->peer_slot, (int)e->peer_pid);
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
        char what[80];
        if (!st->count)
            printf("%-12s %4s %-8s %-8s %-22s %10s %10s %8s %10s %8s %10s %8s %8s %s\n",
                   "DOMAIN", "SLOT", "PID", "KIND", "PEER", "MSGS OUT", "MSGS IN", "WAKES",
                   "NO WAKE", "SLEEPS", "SPUN OK", "YIELDS", "SPIN ms", "BUDGET us");
        if (e->kind == RPAL_STATS_CONN)
            snprintf(what, sizeof what, "fd %d, slot %u", e->fd, e->peer_slot);
        else
            snprintf(what, sizeof what, "%s %.14s, slot %u",
                     e->kind == RPAL_STATS_CALLER ? "to" : "of", e->service, e->peer_slot);
        printf("%-12s %4u %-8d %-8s %-22s %10llu %10llu %8llu %10llu %8llu %10llu %8llu %8.1f %.1f\n",
               e->domain, e->slot, (int)e->pid, stat_kind[e->kind], what,
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
    struct stat_state st = {0, 0};
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            st.json = 1;
        else
            return usage();
    }
    if (st.json) {
        printf("{\"dir\":");
        json_str(rpal_ns_dir());
        printf(",\"channels\":[");
    }
    int err = rpal_stats_foreach(stat_one, &st);
    if (st.json)
        printf("%s]}\n", st.count ? "\n" : "");
    else if (!st.count && err == 0)
        printf("no channels or connections in %s\n", rpal_ns_dir());
    return err < 0 ? fail("stat", NULL, err) : 0;
}

/* `rpal bench NAME ARGS`: run the benchmark program NAME. */
static int cmd_bench(int argc, char **argv)
{
    if (argc < 1 || strchr(argv[0], '/') || argv[0][0] == '.')
        return usage();
    return exec_helper("benchmark", "bench", argv[0], argv);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
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
    if (!strcmp(cmd, "chaos")) /* a program of its own: tools/chaos.c */
        return exec_helper("chaos program", "", "chaos", argv + 1);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("rpal %s\n", rpal_version());
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        fputs(usage_text, stdout);
        return 0;
    }
    return usage();
}
