function rtd_si_teardown(src, evt, varargin) %#ok<INUSD>
%RTD_SI_TEARDOWN  ScanImage user function (events 'acqModeDone' and 'acqAbort'):
%   send session_end (with the number of frames sent) and close the publisher.
    if isempty(rtd_publisher('state'))
        return
    end
    n_errors = rtd_si_error_count('get');
    if n_errors > 0
        warning('rtd:frames', 'rt-decoder publisher: %d frame(s) failed to publish this session', n_errors);
    end
    rtd_publisher('end');
    rtd_publisher('close');
end
