function rtd_transport_send(t, parts)
%RTD_TRANSPORT_SEND  Send one multipart message (cell array of uint8 row vectors).
%   All parts but the last go with the "more" flag, so the message arrives whole or not
%   at all. A PUB socket never blocks: at its high-water mark it drops the message
%   (the subscriber sees the gap in seq).
    n = numel(parts);
    switch t.kind
        case 'octave'
            for k = 1:n
                if k < n
                    rc = zmq_send(t.handle, parts{k}, ZMQ_SNDMORE);
                else
                    rc = zmq_send(t.handle, parts{k});
                end
                if rc < 0
                    error('rtd:transport', 'zmq_send failed on part %d', k);
                end
            end
        case 'python'
            lst = py.list();
            for k = 1:n
                lst.append(py.bytes(parts{k}));
            end
            t.handle.send_multipart(lst);
        case 'jeromq'
            for k = 1:n
                data = typecast(parts{k}, 'int8');
                if k < n
                    t.handle.sendMore(data);
                else
                    t.handle.send(data, 0);
                end
            end
        case 'callback'
            t.send_fn(parts);
        otherwise
            error('rtd:transport', 'unknown transport kind ''%s''', t.kind);
    end
end
