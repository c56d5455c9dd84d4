function parts = rtd_encode_session_end(session_id, seq, t_ns, n_frames)
%RTD_ENCODE_SESSION_END  Wire protocol v1 "session_end" message after N_FRAMES frames.
    h = rtd_header('session_end', session_id, seq, t_ns);
    h.n_frames = int64(n_frames);
    h.bufs = {};
    parts = {rtd_msgpack(h)};
end
