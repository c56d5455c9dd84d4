function out = rtd_si_integration_output(vals, varargin)
%RTD_SI_INTEGRATION_OUTPUT  Output function for ScanImage's ROI Integration: publish
%   the per-frame integration values ScanImage computed (its native ROI means).
%
%   In ScanImage's Integration controls, set an output channel's mode to 'Function' and
%   its function to @rtd_si_integration_output, with all integration ROIs of the
%   session assigned to that channel in roi_ids order. ScanImage calls it once per
%   integrated frame with the vector of values.
%
%   Frame index and time: if the first extra argument is a struct with fields
%   frameNumber (1-based) and/or timestamp (s), they are used; otherwise the index is
%   the number of calls since rtd_si_setup and the time is the publisher's clock.
%   Returns 0 (the value ScanImage writes to the output channel). Errors are counted,
%   never thrown into ScanImage.
    persistent calls last_seq_session
    out = 0;
    try
        S = rtd_publisher('state');
        if isempty(S)
            return
        end
        if isempty(calls) || ~isequal(last_seq_session, S.cfg.session_id)
            calls = int64(0);
            last_seq_session = S.cfg.session_id;
        end
        frame_index = calls;
        acq_ns = rtd_publisher('now_ns');
        if ~isempty(varargin) && isstruct(varargin{1})
            meta = varargin{1};
            if isfield(meta, 'frameNumber')
                frame_index = int64(meta.frameNumber) - 1;
            end
            if isfield(meta, 'timestamp')
                acq_ns = int64(round(meta.timestamp * 1e9));
            end
        end
        calls = calls + 1;
        rtd_publisher('frame', frame_index, acq_ns, vals);
    catch err
        rtd_si_error_count('add', err);
    end
end
