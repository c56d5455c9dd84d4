/*
 * rt_publisher.h -- publish ROI fluorescence frames to rt-decoder (wire protocol v1).
 *
 * A small C library for acquisition code written in C, C++ or LabVIEW (through a
 * Call Library Function node). It owns one ZeroMQ PUB socket and writes each message
 * as the protocol demands: part 0 a msgpack map (the header), then one raw
 * little-endian buffer per entry of header["bufs"]. See docs/protocol.md.
 *
 * Usage:
 *     rtp_publisher *p = rtp_open("tcp://127.0.0.1:5555", 0, "rig1-2026-11-29");
 *     rtp_session_info info = rtp_session_info_default();
 *     info.frame_rate_hz = 30.0; info.n_rois = n; info.roi_ids = ids;
 *     rtp_session_start(p, &info);            // send first; re-send about once a second
 *     rtp_send_frame(p, frame_index, acq_ns, values, n, NULL);
 *     rtp_heartbeat(p);                       // when idle
 *     rtp_session_end(p, n_frames);
 *     rtp_close(p);
 *
 * Every function returns 0 on success and -1 on error (see rtp_last_error). The
 * publisher numbers its messages itself (header "seq", starting at 0, +1 per message),
 * so subscribers can count what the PUB socket dropped. Not thread-safe: use one
 * publisher per thread.
 */
#ifndef RT_PUBLISHER_H
#define RT_PUBLISHER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RTP_PROTOCOL_VERSION 1
#define RTP_N_BEHAVIOUR 4 /* pupil_dilation, running_speed, pupil_x, pupil_y */

typedef struct rtp_publisher rtp_publisher;

/* Session metadata (the "session_start" message). */
typedef struct {
    double frame_rate_hz;       /* acquisition rate, (0, 10000] */
    int plane;                  /* imaging plane, 0..1023 */
    int n_rois;                 /* number of ROIs, >= 1 */
    const int64_t *roi_ids;     /* n_rois stable ROI ids (required) */
    const float *roi_centres;   /* n_rois x 2 (y, x) in FOV pixels, row-major, or NULL */
    int is_activity;            /* nonzero if values are already deconvolved activity */
    const char *source;         /* free text naming the publisher, or NULL */
    int stim_height, stim_width;/* stimulus shape in pixels; 0, 0 = none */
} rtp_session_info;

/* Defaults: 30 Hz, plane 0, no centres, fluorescence, source "c-publisher", no stimulus. */
rtp_session_info rtp_session_info_default(void);

/* Open a PUB socket that connects (bind = 0) or binds (bind != 0) to endpoint.
 * session_id: 1..256 characters. Returns NULL on failure (message on stderr). */
rtp_publisher *rtp_open(const char *endpoint, int bind, const char *session_id);

/* Set the send high-water mark in messages (call before the first send). */
int rtp_set_sndhwm(rtp_publisher *p, int messages);

int rtp_session_start(rtp_publisher *p, const rtp_session_info *info);

/* One frame: n float32 values in ROI order; acq_ns: acquisition time (ns, source clock);
 * behaviour: RTP_N_BEHAVIOUR floats or NULL. */
int rtp_send_frame(rtp_publisher *p, int64_t frame_index, int64_t acq_ns, const float *values,
                   int n, const float *behaviour);

int rtp_heartbeat(rtp_publisher *p);
int rtp_session_end(rtp_publisher *p, int64_t n_frames);

/* Close the socket (waits up to 1 s for queued messages) and free the publisher. */
void rtp_close(rtp_publisher *p);

/* Text of the last error on p ("" if none). */
const char *rtp_last_error(const rtp_publisher *p);

/* Next sequence number that will be sent. */
uint64_t rtp_next_seq(const rtp_publisher *p);

/* CLOCK_MONOTONIC in nanoseconds (the clock for acq_ns when the source has none). */
int64_t rtp_now_ns(void);

#ifdef __cplusplus
}
#endif
#endif /* RT_PUBLISHER_H */
