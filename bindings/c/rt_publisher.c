/*
 * rt_publisher.c -- see rt_publisher.h. Depends on libzmq only.
 *
 * The msgpack writer below knows the few types the protocol header needs: maps,
 * strings, signed/unsigned integers (seq is uint64, stamps int64), float64, bools and
 * arrays. Payload buffers are sent little-endian; on a big-endian host they are
 * byte-swapped into a scratch buffer first.
 */
#define _POSIX_C_SOURCE 199309L
#include "rt_publisher.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define RTP_MAX_HEADER 65536
#define RTP_MAX_NAME 256
#define RTP_MAX_ROIS 1000000

struct rtp_publisher {
    void *ctx;
    void *sock;
    char sid[RTP_MAX_NAME + 1];
    uint64_t seq;
    unsigned char hdr[RTP_MAX_HEADER];
    size_t len;
    int overflow;
    unsigned char *scratch; /* big-endian hosts only */
    size_t scratch_cap;
    char err[256];
};

/* ------------------------------------------------------------------ msgpack writer */

static void put(rtp_publisher *p, const void *data, size_t n) {
    if (p->overflow || p->len + n > RTP_MAX_HEADER) {
        p->overflow = 1;
        return;
    }
    memcpy(p->hdr + p->len, data, n);
    p->len += n;
}

static void put_u8(rtp_publisher *p, unsigned v) {
    unsigned char b = (unsigned char)v;
    put(p, &b, 1);
}

static void put_be(rtp_publisher *p, uint64_t v, int nbytes) {
    unsigned char b[8];
    for (int i = 0; i < nbytes; i++) b[i] = (unsigned char)(v >> (8 * (nbytes - 1 - i)));
    put(p, b, (size_t)nbytes);
}

static void mp_uint(rtp_publisher *p, uint64_t v) {
    if (v < 128) put_u8(p, (unsigned)v);
    else if (v <= 0xff) { put_u8(p, 0xcc); put_be(p, v, 1); }
    else if (v <= 0xffff) { put_u8(p, 0xcd); put_be(p, v, 2); }
    else if (v <= 0xffffffffu) { put_u8(p, 0xce); put_be(p, v, 4); }
    else { put_u8(p, 0xcf); put_be(p, v, 8); }
}

static void mp_int(rtp_publisher *p, int64_t v) {
    if (v >= 0) { mp_uint(p, (uint64_t)v); return; }
    if (v >= -32) put_u8(p, (unsigned)(0xe0 | (v + 32)));
    else if (v >= INT8_MIN) { put_u8(p, 0xd0); put_be(p, (uint64_t)v, 1); }
    else if (v >= INT16_MIN) { put_u8(p, 0xd1); put_be(p, (uint64_t)v, 2); }
    else if (v >= INT32_MIN) { put_u8(p, 0xd2); put_be(p, (uint64_t)v, 4); }
    else { put_u8(p, 0xd3); put_be(p, (uint64_t)v, 8); }
}

static void mp_float64(rtp_publisher *p, double v) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    put_u8(p, 0xcb);
    put_be(p, bits, 8);
}

static void mp_bool(rtp_publisher *p, int v) { put_u8(p, v ? 0xc3 : 0xc2); }

static void mp_str(rtp_publisher *p, const char *s) {
    size_t n = strlen(s);
    if (n < 32) put_u8(p, (unsigned)(0xa0 | n));
    else if (n <= 0xff) { put_u8(p, 0xd9); put_be(p, n, 1); }
    else if (n <= 0xffff) { put_u8(p, 0xda); put_be(p, n, 2); }
    else { put_u8(p, 0xdb); put_be(p, n, 4); }
    put(p, s, n);
}

static void mp_array(rtp_publisher *p, uint32_t n) {
    if (n < 16) put_u8(p, 0x90 | n);
    else if (n <= 0xffff) { put_u8(p, 0xdc); put_be(p, n, 2); }
    else { put_u8(p, 0xdd); put_be(p, n, 4); }
}

static void mp_map(rtp_publisher *p, uint32_t n) {
    if (n < 16) put_u8(p, 0x80 | n);
    else if (n <= 0xffff) { put_u8(p, 0xde); put_be(p, n, 2); }
    else { put_u8(p, 0xdf); put_be(p, n, 4); }
}

/* ------------------------------------------------------------------ helpers */

static int fail(rtp_publisher *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    return -1;
}

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

int64_t rtp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Start a header: the common keys plus room for n_extra more map entries. */
static void begin(rtp_publisher *p, const char *kind, int64_t t_ns, uint32_t n_extra) {
    p->len = 0;
    p->overflow = 0;
    mp_map(p, 5 + n_extra);
    mp_str(p, "v"); mp_uint(p, RTP_PROTOCOL_VERSION);
    mp_str(p, "kind"); mp_str(p, kind);
    mp_str(p, "sid"); mp_str(p, p->sid);
    mp_str(p, "seq"); mp_uint(p, p->seq);
    mp_str(p, "t_ns"); mp_int(p, t_ns);
}

/* One "bufs" descriptor: [name, dtype, shape]. */
static void buf_descr(rtp_publisher *p, const char *name, const char *dtype, int ndim, const int64_t *shape) {
    mp_array(p, 3);
    mp_str(p, name);
    mp_str(p, dtype);
    mp_array(p, (uint32_t)ndim);
    for (int i = 0; i < ndim; i++) mp_int(p, shape[i]);
}

/* Little-endian view of n items of `size` bytes (a copy on big-endian hosts). */
static const void *le(rtp_publisher *p, const void *data, size_t n, size_t size) {
    if (host_is_little_endian()) return data;
    size_t nbytes = n * size;
    if (nbytes > p->scratch_cap) {
        unsigned char *s = realloc(p->scratch, nbytes);
        if (!s) return NULL;
        p->scratch = s;
        p->scratch_cap = nbytes;
    }
    const unsigned char *src = data;
    for (size_t i = 0; i < n; i++)
        for (size_t b = 0; b < size; b++) p->scratch[i * size + b] = src[i * size + size - 1 - b];
    return p->scratch;
}

/* Send the header plus n_bufs payloads; the seq advances only when all parts went. */
static int send_parts(rtp_publisher *p, int n_bufs, const void **bufs, const size_t *sizes) {
    if (p->overflow) return fail(p, "header exceeds %d bytes", RTP_MAX_HEADER);
    if (zmq_send(p->sock, p->hdr, p->len, n_bufs ? ZMQ_SNDMORE : 0) < 0)
        return fail(p, "zmq_send(header): %s", zmq_strerror(zmq_errno()));
    for (int i = 0; i < n_bufs; i++) {
        if (zmq_send(p->sock, bufs[i], sizes[i], i + 1 < n_bufs ? ZMQ_SNDMORE : 0) < 0)
            return fail(p, "zmq_send(buffer %d): %s", i, zmq_strerror(zmq_errno()));
    }
    p->seq++;
    return 0;
}

/* ------------------------------------------------------------------ public API */

rtp_session_info rtp_session_info_default(void) {
    rtp_session_info info;
    memset(&info, 0, sizeof info);
    info.frame_rate_hz = 30.0;
    info.source = "c-publisher";
    return info;
}

rtp_publisher *rtp_open(const char *endpoint, int bind, const char *session_id) {
    if (!endpoint || !session_id || strlen(session_id) < 1 || strlen(session_id) > RTP_MAX_NAME) {
        fprintf(stderr, "rtp_open: endpoint and a session id of 1..%d characters are required\n", RTP_MAX_NAME);
        return NULL;
    }
    rtp_publisher *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    strcpy(p->sid, session_id);
    p->ctx = zmq_ctx_new();
    p->sock = p->ctx ? zmq_socket(p->ctx, ZMQ_PUB) : NULL;
    if (!p->sock) {
        fprintf(stderr, "rtp_open: cannot create a ZeroMQ PUB socket: %s\n", zmq_strerror(zmq_errno()));
        rtp_close(p);
        return NULL;
    }
    int linger_ms = 1000;
    zmq_setsockopt(p->sock, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    int rc = bind ? zmq_bind(p->sock, endpoint) : zmq_connect(p->sock, endpoint);
    if (rc != 0) {
        fprintf(stderr, "rtp_open: cannot %s %s: %s\n", bind ? "bind" : "connect", endpoint,
                zmq_strerror(zmq_errno()));
        rtp_close(p);
        return NULL;
    }
    return p;
}

int rtp_set_sndhwm(rtp_publisher *p, int messages) {
    if (zmq_setsockopt(p->sock, ZMQ_SNDHWM, &messages, sizeof messages) != 0)
        return fail(p, "ZMQ_SNDHWM=%d: %s", messages, zmq_strerror(zmq_errno()));
    return 0;
}

int rtp_session_start(rtp_publisher *p, const rtp_session_info *info) {
    if (!info || info->n_rois < 1 || info->n_rois > RTP_MAX_ROIS || !info->roi_ids)
        return fail(p, "session_start: n_rois must be 1..%d with roi_ids given", RTP_MAX_ROIS);
    if (!(isfinite(info->frame_rate_hz) && info->frame_rate_hz > 0 && info->frame_rate_hz <= 10000))
        return fail(p, "session_start: frame_rate_hz=%g outside (0, 10000]", info->frame_rate_hz);
    if (info->plane < 0 || info->plane > 1023) return fail(p, "session_start: plane=%d outside 0..1023", info->plane);
    int has_stim = info->stim_height > 0 && info->stim_width > 0;
    int n_bufs = info->roi_centres ? 2 : 1;
    begin(p, "session_start", rtp_now_ns(), 6 + (has_stim ? 1 : 0));
    mp_str(p, "rate_hz"); mp_float64(p, info->frame_rate_hz);
    mp_str(p, "plane"); mp_int(p, info->plane);
    mp_str(p, "n_rois"); mp_int(p, info->n_rois);
    mp_str(p, "activity"); mp_bool(p, info->is_activity);
    mp_str(p, "source"); mp_str(p, info->source ? info->source : "");
    if (has_stim) {
        mp_str(p, "stim"); mp_array(p, 2); mp_int(p, info->stim_height); mp_int(p, info->stim_width);
    }
    mp_str(p, "bufs");
    mp_array(p, (uint32_t)n_bufs);
    int64_t shape[2] = {info->n_rois, 2};
    buf_descr(p, "roi_ids", "<i8", 1, shape);
    if (info->roi_centres) buf_descr(p, "roi_centres", "<f4", 2, shape);
    const void *bufs[2];
    size_t sizes[2] = {(size_t)info->n_rois * 8, (size_t)info->n_rois * 8};
    /* two payloads may both need swapping: copy the first out of the scratch buffer */
    void *ids_copy = NULL;
    bufs[0] = le(p, info->roi_ids, (size_t)info->n_rois, 8);
    if (!host_is_little_endian() && info->roi_centres) {
        ids_copy = malloc(sizes[0]);
        if (!ids_copy) return fail(p, "out of memory");
        memcpy(ids_copy, bufs[0], sizes[0]);
        bufs[0] = ids_copy;
    }
    if (info->roi_centres) bufs[1] = le(p, info->roi_centres, (size_t)info->n_rois * 2, 4);
    if (!bufs[0] || (info->roi_centres && !bufs[1])) { free(ids_copy); return fail(p, "out of memory"); }
    int rc = send_parts(p, n_bufs, bufs, sizes);
    free(ids_copy);
    return rc;
}

int rtp_send_frame(rtp_publisher *p, int64_t frame_index, int64_t acq_ns, const float *values, int n,
                   const float *behaviour) {
    if (!values || n < 1 || n > RTP_MAX_ROIS) return fail(p, "frame: n=%d outside 1..%d", n, RTP_MAX_ROIS);
    if (frame_index < 0) return fail(p, "frame: frame_index=%lld is negative", (long long)frame_index);
    begin(p, "frame", acq_ns, behaviour ? 3 : 2);
    mp_str(p, "frame"); mp_int(p, frame_index);
    if (behaviour) {
        mp_str(p, "beh");
        mp_array(p, RTP_N_BEHAVIOUR);
        for (int i = 0; i < RTP_N_BEHAVIOUR; i++) mp_float64(p, (double)behaviour[i]);
    }
    mp_str(p, "bufs");
    mp_array(p, 1);
    int64_t shape[1] = {n};
    buf_descr(p, "values", "<f4", 1, shape);
    const void *bufs[1] = {le(p, values, (size_t)n, 4)};
    size_t sizes[1] = {(size_t)n * 4};
    if (!bufs[0]) return fail(p, "out of memory");
    return send_parts(p, 1, bufs, sizes);
}

int rtp_heartbeat(rtp_publisher *p) {
    begin(p, "heartbeat", rtp_now_ns(), 1);
    mp_str(p, "bufs"); mp_array(p, 0);
    return send_parts(p, 0, NULL, NULL);
}

int rtp_session_end(rtp_publisher *p, int64_t n_frames) {
    if (n_frames < 0) return fail(p, "session_end: n_frames=%lld is negative", (long long)n_frames);
    begin(p, "session_end", rtp_now_ns(), 2);
    mp_str(p, "n_frames"); mp_int(p, n_frames);
    mp_str(p, "bufs"); mp_array(p, 0);
    return send_parts(p, 0, NULL, NULL);
}

void rtp_close(rtp_publisher *p) {
    if (!p) return;
    if (p->sock) zmq_close(p->sock);
    if (p->ctx) zmq_ctx_term(p->ctx);
    free(p->scratch);
    free(p);
}

const char *rtp_last_error(const rtp_publisher *p) { return p ? p->err : "no publisher"; }

uint64_t rtp_next_seq(const rtp_publisher *p) { return p->seq; }
