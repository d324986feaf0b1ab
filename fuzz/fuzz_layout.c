/* Fuzz target: a region's layout table (src/layout.c).
 *
 * The header area of a region file (REGION_HDR_MAP bytes, mapped read-only
 * by every attacher) holds a control page and two copies of the layout
 * table; any read-write attacher writes them. rpal__lay_parse() reads the
 * current table from such an area, as `rpal region info` (rpal__lay_read) does;
 * the attach path and the agent thread read it with the same table_read().
 * Here the area is a buffer of exactly REGION_HDR_MAP bytes.
 *
 * Input: flags, a choice of the region's data size (u8), the first 16 bytes
 * of the control page (magic, generation, ack), how many objects the caller
 * has room for (u8), then the bytes of the table of that generation. With
 * FZ_FIX the table's checksum is made right.
 */
#include "fuzz.h"

#include <stddef.h>
#include <sys/mman.h>

static const uint64_t sizes[] = {RPAL_PAGE, 1 << 20, 64ull << 20, 1ull << 30,
                                 RPAL_REGION_WINDOW_SIZE};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_in in = {data, size};
    unsigned flags = fz_u8(&in);
    uint64_t rsize = sizes[fz_u8(&in) % (sizeof sizes / sizeof sizes[0])];
    /* A global, not a heap block: allocating 128 KiB per input costs ASan
     * an mmap each time; globals get redzones too. What an input wrote is
     * zeroed again at the end. */
    static _Alignas(4096) uint8_t hdr[REGION_HDR_MAP];
    fz_bytes(&in, hdr + LAY_CTL_OFF, 16);
    unsigned max = fz_u8(&in);
    uint32_t gen;
    memcpy(&gen, hdr + LAY_CTL_OFF + 8, sizeof gen);
    size_t off = rpal__lay_table_off(gen), room = REGION_HDR_MAP - off;
    size_t wrote = in.n < room ? in.n : room;
    fz_bytes(&in, hdr + off, wrote);
    if (flags & FZ_FIX)
        rpal__lay_table_seal(hdr, gen);
    /* Exactly MAX objects of room: writing one more is reported. */
    struct rpal_region_object *objs = malloc((max ? max : 1) * sizeof *objs);
    uint32_t got_gen = 0;
    int n = objs ? rpal__lay_parse(hdr, rsize, &got_gen, objs, max) : 0;
    for (int i = 0; i < n && i < (int)max; i++) {
        /* What a lister then relies on: each object inside the region, a
         * file's path a string. */
        if (objs[i].offset > rsize || objs[i].length > rsize - objs[i].offset)
            __builtin_trap();
        if (objs[i].kind == RPAL_OBJ_FILE)
            (void)strlen(objs[i].path);
    }
    free(objs);
    memset(hdr + LAY_CTL_OFF, 0, 16);
    memset(hdr + off, 0, wrote > 64 ? wrote : 64); /* the seal's checksum is within */
    return 0;
}

/* A header area as a new region gets it (rpal__lay_init), written to a memfd:
 * only while writing seeds, never per input. */
#include <unistd.h>

static void seed_init(const char *name, uint64_t size, int empty, uint8_t max)
{
    int fd = memfd_create("fuzz-seed", MFD_CLOEXEC);
    uint8_t *hdr = calloc(1, REGION_HDR_MAP);
    if (fd < 0 || !hdr || ftruncate(fd, REGION_HDR_MAP) < 0 || rpal__lay_init(fd, size, empty) < 0 ||
        pread(fd, hdr, REGION_HDR_MAP, 0) != (ssize_t)REGION_HDR_MAP) {
        perror("rpal__lay_init seed");
        exit(1);
    }
    close(fd);
    uint8_t size_sel = 0;
    while (sizes[size_sel] != size)
        size_sel++;
    uint32_t gen;
    memcpy(&gen, hdr + LAY_CTL_OFF + 8, sizeof gen);
    /* The table: its fixed part and one object of up to 512 bytes (the
     * rest of the copy is zeros, which the input leaves as they are). */
    size_t tlen = 1024;
    fz_seed_begin(name, 0);
    fz_seed_more(&size_sel, 1);
    fz_seed_more(hdr + LAY_CTL_OFF, 16);
    fz_seed_more(&max, 1);
    fz_seed_more(hdr + rpal__lay_table_off(gen), tlen);
    fz_seed_end();
    free(hdr);
}

/* A table of N objects after the change OP, for a region of 1 MiB: what
 * rpal_region_map and friends leave (file objects among them), which a
 * fuzzer would hardly build from rpal__lay_init's single object over the whole
 * region. Written with FZ_FIX: the target seals it. */
static void seed_table(const char *name, uint32_t gen, uint32_t op, unsigned n, uint8_t max)
{
    struct lay_table *t = calloc(1, sizeof *t);
    t->gen = gen;
    t->nobj = n;
    t->op = op;
    t->op_prot = PROT_READ;
    t->op_off = 4 * RPAL_PAGE;
    t->op_len = 4 * RPAL_PAGE;
    uint64_t step = ((1 << 20) / n) & ~(RPAL_PAGE - 1);
    for (unsigned i = 0; i < n; i++) {
        struct lay_obj *o = &t->obj[i];
        o->off = i * step;
        o->len = step - (i % 2) * RPAL_PAGE; /* a hole after every other one */
        o->kind = i % 3 == 1 ? RPAL_OBJ_FILE : RPAL_OBJ_ANON;
        o->prot = i % 4 == 0 ? PROT_READ | PROT_WRITE : i % 4 == 1 ? PROT_READ : 0;
        if (i % 3 == 2) { /* made by rpal_region_map: side-store memory */
            o->store = LAY_STORE_SIDE;
            o->foff = LAY_SIDE_BASE + i * step;
        }
        if (o->kind == RPAL_OBJ_FILE) {
            o->maxprot = PROT_READ | PROT_WRITE;
            o->src_pid = 4242;
            o->src_fd = 7;
            o->dev = 0x2a;
            o->ino = 1000 + i;
            o->foff = i * RPAL_PAGE;
            snprintf(o->path, sizeof o->path, "/dev/shm/data.%u", i);
        }
    }
    uint64_t magic = LAY_MAGIC;
    uint32_t ack = 0;
    uint8_t size_sel = 1; /* 1 MiB */
    fz_seed_begin(name, FZ_FIX);
    fz_seed_more(&size_sel, 1);
    fz_seed_more(&magic, sizeof magic);
    fz_seed_more(&gen, sizeof gen);
    fz_seed_more(&ack, sizeof ack);
    fz_seed_more(&max, 1);
    fz_seed_more(t, offsetof(struct lay_table, obj) + n * sizeof t->obj[0]);
    fz_seed_end();
    free(t);
}

static void fz_write_seeds(void)
{
    seed_init("one-anon", 1 << 20, 0, 4);
    seed_init("empty", 64ull << 20, 1, 0);
    seed_init("one-anon-noroom", 1ull << 30, 0, 0);
    seed_table("three-gen5-map", 5, OP_MAP, 3, 8);
    seed_table("sixteen-gen2-protect", 2, OP_PROTECT, 16, 10);
}
