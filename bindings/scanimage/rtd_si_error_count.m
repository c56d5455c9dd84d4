function n = rtd_si_error_count(cmd, err)
%RTD_SI_ERROR_COUNT  Count (and warn about, sparingly) errors in the per-frame hooks.
%   A user function that throws would disturb ScanImage's acquisition loop, so the
%   frame hooks catch, count here, warn on the 1st, 10th, 100th, ... and carry on.
    persistent count
    if isempty(count)
        count = 0;
    end
    switch cmd
        case 'reset'
            count = 0;
        case 'add'
            count = count + 1;
            if any(count == 10 .^ (0:9))
                warning('rtd:frames', 'rt-decoder publisher error #%d: %s', count, err.message);
            end
    end
    n = count;
end
