function h = rtd_header(kind, session_id, seq, t_ns)
%RTD_HEADER  The common header fields of every wire protocol v1 message (a struct).
%   Keys: v (1), kind, sid, seq (uint64), t_ns (int64).
    if ~ischar(session_id) || numel(session_id) < 1 || numel(session_id) > 256
        error('rtd:encode', 'session id must be a char vector of 1..256 characters');
    end
    h = struct();
    h.v = int64(1);
    h.kind = kind;
    h.sid = session_id;
    h.seq = uint64(seq);
    h.t_ns = int64(t_ns);
end
