/* Fuzz target: a region file's header (src/region.c).
 *
 * Whoever may write a region file may have changed its header page:
 * rpal_region_attach, stat and unlink read it with rpal__region_hdr_validate()
 * before using any field to map memory. Here the header is the input.
 *
 * Input: flags, the file's size (u64), then struct region_hdr. With FZ_FIX
 * the header's checksum is made right and the file's size is the one the
 * header implies (granule, plus the data for a region that is not huge), so
 * that the checks after those two run.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_in in = {data, size};
    unsigned flags = fz_u8(&in);
    uint64_t file_size;
    fz_bytes(&in, &file_size, sizeof file_size);
    struct region_hdr h;
    fz_bytes(&in, &h, sizeof h);
    if (flags & FZ_FIX) {
        h.check = rpal__region_hdr_check(&h);
        file_size = h.granule + (h.flags & RPAL_REGION_HUGE ? 0 : h.size);
    }
    if (rpal__region_hdr_validate(&h, file_size) == 0) {
        /* What an attacher then maps: the header granule below BASE and
         * SIZE bytes of data, all inside the region half of the window. */
        uint64_t lo = RPAL_WINDOW_BASE, hi = lo + RPAL_REGION_WINDOW_SIZE;
        if (h.base - h.granule < lo || h.base + h.size > hi || h.base + h.size < h.base)
            __builtin_trap();
    }
    return 0;
}

static void seed_hdr(const char *name, uint64_t base, uint64_t size, uint32_t rflags)
{
    struct region_hdr h = {.magic = REGION_MAGIC, .version = REGION_VERSION,
                           .hdr_size = sizeof h, .granule = RPAL_REGION_GRANULE,
                           .base = base, .size = size, .flags = rflags,
                           .creator_pid = 1234, .creator_uid = 1000,
                           .creator_start = 987654, .created_ns = 1};
    h.check = rpal__region_hdr_check(&h);
    uint64_t file_size = h.granule + (rflags & RPAL_REGION_HUGE ? 0 : size);
    for (unsigned fix = 0; fix < 2; fix++) {
        char n[64];
        snprintf(n, sizeof n, "%s%s", name, fix ? "-fix" : "");
        fz_seed_begin(n, fix ? FZ_FIX : 0);
        fz_seed_more(&file_size, sizeof file_size);
        fz_seed_more(&h, sizeof h);
        fz_seed_end();
    }
}

static void fz_write_seeds(void)
{
    seed_hdr("plain", RPAL_WINDOW_BASE + RPAL_REGION_GRANULE, 1 << 20, 0);
    seed_hdr("transient", RPAL_WINDOW_BASE + 64 * RPAL_REGION_GRANULE, 64 << 20,
             RPAL_REGION_TRANSIENT);
    seed_hdr("huge", RPAL_WINDOW_BASE + RPAL_HUGE_ALIGN, RPAL_HUGE_ALIGN, RPAL_REGION_HUGE);
    seed_hdr("top", RPAL_WINDOW_BASE + RPAL_REGION_WINDOW_SIZE - (4 << 20), 4 << 20, 0);
}
