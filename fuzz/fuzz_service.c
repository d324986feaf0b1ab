/* Fuzz target: the service handshake and the claim records it checks
 * (src/service.c, src/channel.c, src/domain.c).
 *
 * A service answering a request (answer() in service.c) checks the message
 * (rpal__svc_req_check), then for a sharing request the name and key
 * (rpal__svc_req_admit) and the requester's claim record, read from its claim
 * file (rpal__dom_member_validate, rpal__peer_rec_match); for a channel request the ring
 * the caller says it put in its slot, which the service reads there
 * (rpal__ch_tx_check). A requester checks the service's record the same way.
 * Here the request, the record and the caller's slot come from the input.
 *
 * Input: flags, struct hs_req, struct member_rec, then the caller's slot.
 * With FZ_FIX the request's addr is an offset into the slot.
 */
#include "fuzz.h"

#define SLOT_MAX (256u << 10)
#define PID 4242
static const char service_name[] = "kv";
static const uint8_t service_key[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
/* The challenge's nonces (the requester's, the service's). */
static const uint8_t nonces[2 * HS_NONCE] = {7, 7, 7, 7, 42};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_in in = {data, size};
    unsigned flags = fz_u8(&in);
    struct hs_req req;
    fz_bytes(&in, &req, sizeof req);
    struct member_rec *rec = malloc(sizeof *rec);
    if (!rec)
        return 0;
    fz_bytes(&in, rec, sizeof *rec);
    struct fz_slot s;
    if (fz_slot_fill(&s, &in, 64, SLOT_MAX) < 0) {
        free(rec);
        return 0;
    }
    req.addr = fz_addr(&s, req.addr, flags);
    if (rpal__svc_req_check(&req) == 0) {
        if (strlen(req.service) >= sizeof req.service)
            __builtin_trap(); /* the name must have been made a string */
        if (req.kind == HS_KIND_CHAN)
            (void)rpal__ch_tx_check(&req, s.base, s.size);
        else
            (void)rpal__svc_req_admit(&req, service_name, service_key, nonces);
        /* The claim record of the slot the request names; the requester
         * checks the service's own the same way, with its name. */
        if (rpal__dom_member_validate(rec, req.slot) == 0) {
            (void)rpal__peer_rec_match(rec, PID, NULL);
            (void)rpal__peer_rec_match_who(rec, 0, 12345, NULL);
            (void)rpal__peer_rec_match(rec, PID, service_name);
            (void)rpal__peer_rec_match(rec, PID, req.service);
        }
    }
    fz_slot_free(&s);
    free(rec);
    return 0;
}

static void seed(const char *name, const struct hs_req *req, int with_ring)
{
    struct member_rec *rec = calloc(1, sizeof *rec);
    rec->magic = MEMBER_MAGIC;
    rec->version = 1;
    rec->slot = req->slot;
    rec->pid = PID;
    rec->uid = 1000;
    rec->start = 5555;
    rec->nservices = 2;
    snprintf(rec->services[0], sizeof rec->services[0], "other");
    snprintf(rec->services[1], sizeof rec->services[1], "%s", service_name);
    rec->npeers = 3;
    rec->peers[0] = 1, rec->peers[1] = 7, rec->peers[2] = 1023;
    /* The caller's slot: a ring header at offset 0 as rpal_chan_open
     * writes it (magic "RPALCTX2", depth), entries zero. */
    size_t n = 192 + (size_t)req->depth * sizeof(struct ch_entry);
    uint8_t *slot = calloc(1, n);
    uint64_t tx_magic = 0x325854434c415052ull;
    memcpy(slot, &tx_magic, sizeof tx_magic);
    memcpy(slot + 8, &req->depth, sizeof req->depth);
    fz_seed_begin(name, FZ_FIX);
    fz_seed_more(req, sizeof *req);
    fz_seed_more(rec, sizeof *rec);
    if (with_ring)
        fz_seed_more(slot, n);
    fz_seed_end();
    free(slot);
    free(rec);
}

static void fz_write_seeds(void)
{
    struct hs_req share = {.magic = HS_MAGIC, .version = HS_VERSION, .slot = 5,
                           .slot_size = 64ull << 20, .kind = HS_KIND_SHARE};
    snprintf(share.service, sizeof share.service, "%s", service_name);
    memcpy(share.nonce, nonces, sizeof share.nonce);
    rpal__svc_hs_mac(service_key, "requester", nonces, service_name, share.slot, share.mac);
    seed("share", &share, 0);
    struct hs_req chan = share;
    memset(chan.mac, 0, sizeof chan.mac);
    chan.kind = HS_KIND_CHAN;
    chan.depth = 4;
    chan.addr = 0;
    seed("chan-4", &chan, 1);
    chan.depth = 64;
    seed("chan-64", &chan, 1);
}
