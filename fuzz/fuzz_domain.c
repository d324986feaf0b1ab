/* Fuzz target: a domain's geometry and its members' claim records
 * (src/domain.c).
 *
 * Joining a domain reads <ns>/.domains/NAME/meta (rpal__dom_meta_validate);
 * listing members, finding a connection's peer and checking a requester
 * read each member's claim record slot.N (rpal__dom_member_validate), written by
 * that member. Here both come from the input, and what a lister does with
 * a valid record (rpal_domain_foreach, `rpal ls`) is done with them.
 *
 * Input: flags, struct dom_meta, the slot whose record it is (u16), then
 * struct member_rec. With FZ_FIX the geometry's check is made right.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_in in = {data, size};
    unsigned flags = fz_u8(&in);
    struct dom_meta m;
    fz_bytes(&in, &m, sizeof m);
    unsigned slot = fz_u16(&in);
    struct member_rec *rec = malloc(sizeof *rec);
    if (!rec)
        return 0;
    fz_bytes(&in, rec, sizeof *rec);
    if (flags & FZ_FIX)
        m.check = rpal__dom_meta_check(&m);
    if (rpal__dom_meta_validate(&m) == 0) {
        /* Every slot of the geometry lies inside the domain's half of the
         * window. */
        uint64_t last = m.window + (uint64_t)(m.nslots - 1) * m.slot_size;
        if (m.window != DOM_WINDOW_BASE || last - m.window > DOM_WINDOW_SIZE - m.slot_size)
            __builtin_trap();
    }
    if (rpal__dom_member_validate(rec, slot) == 0) {
        /* The counts bound loops over arrays inside the record and inside
         * struct rpal_member_info: an overrun there stays inside one
         * object, where ASan does not look, so the bounds are checked. */
        if (rec->nservices > MEMBER_MAX_SERVICES || rec->npeers > MEMBER_MAX_PEERS ||
            rec->slot != slot)
            __builtin_trap();
        struct rpal_member_info info;
        memset(&info, 0, sizeof info);
        info.nservices = rec->nservices;
        for (unsigned i = 0; i < rec->nservices; i++) {
            memcpy(info.services[i], rec->services[i], sizeof info.services[i]);
            if (strlen(info.services[i]) >= sizeof info.services[i])
                __builtin_trap();
        }
        info.npeers = rec->npeers;
        for (unsigned i = 0; i < rec->npeers; i++)
            info.peers[i] = rec->peers[i];
        (void)fz_touch(&info, sizeof info);
    }
    free(rec);
    return 0;
}

static void fz_write_seeds(void)
{
    uint64_t sizes[] = {RPAL_DEFAULT_SLOT_SIZE, 16ull << 20, DOM_WINDOW_SIZE};
    for (unsigned k = 0; k < 3; k++) {
        struct dom_meta m = {.magic = META_MAGIC, .version = META_VERSION, .slot_size = sizes[k],
                             .window = DOM_WINDOW_BASE};
        m.nslots = (uint32_t)(DOM_WINDOW_SIZE / sizes[k] > DOM_MAX_SLOTS
                                  ? DOM_MAX_SLOTS : DOM_WINDOW_SIZE / sizes[k]);
        m.check = rpal__dom_meta_check(&m);
        struct member_rec *rec = calloc(1, sizeof *rec);
        rec->magic = MEMBER_MAGIC;
        rec->version = 1;
        rec->slot = k * 100;
        rec->pid = 4242;
        rec->uid = 1000;
        rec->start = 5555;
        rec->nservices = k * 4; /* 0, 4, 8: up to MEMBER_MAX_SERVICES */
        for (unsigned i = 0; i < rec->nservices; i++)
            snprintf(rec->services[i], sizeof rec->services[i], "svc%u", i);
        rec->npeers = k * 128;
        for (unsigned i = 0; i < rec->npeers; i++)
            rec->peers[i] = (uint16_t)(i * 3);
        uint16_t slot = (uint16_t)rec->slot;
        char name[32];
        snprintf(name, sizeof name, "member-%u", k);
        fz_seed_begin(name, 0);
        fz_seed_more(&m, sizeof m);
        fz_seed_more(&slot, sizeof slot);
        fz_seed_more(rec, sizeof *rec);
        fz_seed_end();
        free(rec);
    }
}
