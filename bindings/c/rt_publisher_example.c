/*
 * rt_publisher_example -- publish a synthetic session with rt_publisher.
 *
 *   rt_publisher_example ENDPOINT [--bind] [--rois N] [--frames T] [--rate HZ]
 *                        [--wait-ms MS] [--sid ID] [--hwm N] [--paced]
 *
 * Sends session_start, T frames, a heartbeat and session_end. Frame values are
 * deterministic so a test can recompute them:
 *     values[i] = (float)((frame * 7919 + i * 104729) % 100003) / 7.0f - 1000.0f
 * behaviour = {frame, -frame, 0.5, 0.25}. acq_ns = 1000000 * frame + 17.
 * Without --paced, frames go out as fast as the socket takes them, and the program
 * prints "sent T frames in S s (F frames/s)" on stdout.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rt_publisher.h"

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr, "usage: %s ENDPOINT [--bind] [--rois N] [--frames T] [--rate HZ] [--wait-ms MS] "
                        "[--sid ID] [--hwm N] [--paced]\n", argv[0]);
        return 2;
    }
    const char *endpoint = argv[1];
    const char *sid = "c-example";
    int bind = 0, n_rois = 100, paced = 0, hwm = 0;
    long n_frames = 10, wait_ms = 300;
    double rate = 30.0;
    for (int a = 2; a < argc; a++) {
        const char *k = argv[a];
        const char *v = a + 1 < argc ? argv[a + 1] : NULL;
        if (strcmp(k, "--bind") == 0) bind = 1;
        else if (strcmp(k, "--paced") == 0) paced = 1;
        else if (v && strcmp(k, "--rois") == 0) { n_rois = atoi(v); a++; }
        else if (v && strcmp(k, "--frames") == 0) { n_frames = atol(v); a++; }
        else if (v && strcmp(k, "--rate") == 0) { rate = atof(v); a++; }
        else if (v && strcmp(k, "--wait-ms") == 0) { wait_ms = atol(v); a++; }
        else if (v && strcmp(k, "--sid") == 0) { sid = v; a++; }
        else if (v && strcmp(k, "--hwm") == 0) { hwm = atoi(v); a++; }
        else { fprintf(stderr, "unknown or incomplete option %s\n", k); return 2; }
    }
    if (n_rois < 1 || n_frames < 0) { fprintf(stderr, "--rois must be >= 1 and --frames >= 0\n"); return 2; }

    rtp_publisher *p = rtp_open(endpoint, bind, sid);
    if (!p) return 1;
    if (hwm > 0 && rtp_set_sndhwm(p, hwm) != 0) { fprintf(stderr, "%s\n", rtp_last_error(p)); return 1; }

    int64_t *ids = malloc(sizeof *ids * (size_t)n_rois);
    float *centres = malloc(sizeof *centres * 2 * (size_t)n_rois);
    float *values = malloc(sizeof *values * (size_t)n_rois);
    if (!ids || !centres || !values) return 1;
    for (int i = 0; i < n_rois; i++) {
        ids[i] = 1000 + (int64_t)i;
        centres[2 * i] = (float)i * 0.5f;
        centres[2 * i + 1] = (float)i * 0.25f;
    }
    rtp_session_info info = rtp_session_info_default();
    info.frame_rate_hz = rate;
    info.n_rois = n_rois;
    info.roi_ids = ids;
    info.roi_centres = centres;
    info.source = "c-example";
    info.stim_height = 36;
    info.stim_width = 64;

    sleep_ms(wait_ms); /* let subscribers (re)connect: PUB drops what nobody receives */
    int rc = rtp_session_start(p, &info);
    int64_t t0 = rtp_now_ns();
    for (long f = 0; rc == 0 && f < n_frames; f++) {
        for (int i = 0; i < n_rois; i++)
            values[i] = (float)(((long long)f * 7919 + (long long)i * 104729) % 100003) / 7.0f - 1000.0f;
        float beh[RTP_N_BEHAVIOUR] = {(float)f, (float)-f, 0.5f, 0.25f};
        rc = rtp_send_frame(p, f, 1000000LL * f + 17, values, n_rois, beh);
        if (paced) sleep_ms((long)(1000.0 / rate));
    }
    double dt = (double)(rtp_now_ns() - t0) * 1e-9;
    if (rc == 0) rc = rtp_heartbeat(p);
    if (rc == 0) rc = rtp_session_end(p, n_frames);
    if (rc != 0) fprintf(stderr, "rt_publisher_example: %s\n", rtp_last_error(p));
    else printf("sent %ld frames of %d ROIs in %.6f s (%.1f frames/s)\n", n_frames, n_rois, dt,
                dt > 0 ? (double)n_frames / dt : 0.0);
    fflush(stdout);
    rtp_close(p);
    free(ids);
    free(centres);
    free(values);
    return rc == 0 ? 0 : 1;
}
