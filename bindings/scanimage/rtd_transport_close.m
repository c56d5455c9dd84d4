function rtd_transport_close(t)
%RTD_TRANSPORT_CLOSE  Close the transport's socket (queued messages get up to 1 s).
    switch t.kind
        case 'octave'
            zmq_close(t.handle);
        case 'python'
            t.handle.close();
        case 'jeromq'
            t.context.destroySocket(t.handle);
            t.context.close();
        otherwise
            % callback: nothing to close
    end
end
