function parts = rtd_encode_heartbeat(session_id, seq, t_ns)
%RTD_ENCODE_HEARTBEAT  Wire protocol v1 "heartbeat" message (sent by an idle publisher).
    h = rtd_header('heartbeat', session_id, seq, t_ns);
    h.bufs = {};
    parts = {rtd_msgpack(h)};
end
