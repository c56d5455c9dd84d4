function out = rtd_publisher(cmd, varargin)
%RTD_PUBLISHER  The one rt-decoder publisher of this MATLAB/Octave session.
%
%   rtd_publisher('open', cfg)            open the transport, remember the session
%   rtd_publisher('start')                send session_start (also re-sent by 'frame'
%                                         every cfg.resend_info_every_s seconds)
%   rtd_publisher('frame', frame_index, acq_ns, values)          send one ROI frame
%   rtd_publisher('frame', frame_index, acq_ns, values, beh)     ... with behaviour
%   rtd_publisher('heartbeat')            send a heartbeat
%   rtd_publisher('end')                  send session_end (n_frames = frames sent)
%   rtd_publisher('close')                close the transport
%   s = rtd_publisher('state')            the state struct (seq, n_frames, cfg, ...)
%   t = rtd_publisher('now_ns')           ns since 'open' on this publisher's clock
%
%   cfg fields (see rtd_default_config): address, bind, transport, transport_options,
%   session_id, frame_rate_hz, roi_ids, roi_centres_px, plane, source,
%   stimulus_shape, resend_info_every_s.
%   State lives in a persistent variable, so ScanImage user functions (which get no
%   state of their own) can share it; 'open' on an open publisher closes it first.
    persistent S
    switch cmd
        case 'open'
            if ~isempty(S)
                rtd_transport_close(S.transport);
                S = [];
            end
            cfg = rtd_default_config(varargin{1});
            S = struct();
            S.cfg = cfg;
            S.transport = rtd_transport_open(cfg.transport, cfg.address, cfg.bind, cfg.transport_options);
            S.clock = tic;
            S.seq = uint64(0);
            S.n_frames = int64(0);
            S.last_info_s = -Inf;
            S.info = struct('frame_rate_hz', cfg.frame_rate_hz, 'roi_ids', cfg.roi_ids, ...
                            'roi_centres_px', cfg.roi_centres_px, 'plane', cfg.plane, ...
                            'is_activity', false, 'source', cfg.source, ...
                            'stimulus_shape', cfg.stimulus_shape);
        case 'start'
            require_open(S);
            S = send_info(S);
        case 'frame'
            require_open(S);
            if toc(S.clock) - S.last_info_s >= S.cfg.resend_info_every_s
                S = send_info(S);  % late joiners learn the session
            end
            values = varargin{3};
            if numel(values) ~= numel(S.cfg.roi_ids)
                error('rtd:publisher', 'frame has %d values but the session has %d ROIs', ...
                      numel(values), numel(S.cfg.roi_ids));
            end
            beh = [];
            if numel(varargin) >= 4
                beh = varargin{4};
            end
            parts = rtd_encode_frame(S.cfg.session_id, S.seq, varargin{1}, varargin{2}, values, beh);
            rtd_transport_send(S.transport, parts);
            S.seq = S.seq + 1;
            S.n_frames = S.n_frames + 1;
        case 'heartbeat'
            require_open(S);
            rtd_transport_send(S.transport, rtd_encode_heartbeat(S.cfg.session_id, S.seq, now_ns(S)));
            S.seq = S.seq + 1;
        case 'end'
            require_open(S);
            rtd_transport_send(S.transport, rtd_encode_session_end(S.cfg.session_id, S.seq, now_ns(S), S.n_frames));
            S.seq = S.seq + 1;
        case 'close'
            if ~isempty(S)
                rtd_transport_close(S.transport);
            end
            S = [];
        case 'state'
            out = S;
        case 'now_ns'
            require_open(S);
            out = now_ns(S);
        otherwise
            error('rtd:publisher', 'unknown command ''%s''', cmd);
    end
end

function require_open(S)
    if isempty(S)
        error('rtd:publisher', 'the publisher is not open: call rtd_publisher(''open'', cfg) (or rtd_si_setup) first');
    end
end

function t = now_ns(S)
    t = int64(round(toc(S.clock) * 1e9));
end

function S = send_info(S)
    parts = rtd_encode_session_start(S.cfg.session_id, S.seq, now_ns(S), S.info);
    rtd_transport_send(S.transport, parts);
    S.seq = S.seq + 1;
    S.last_info_s = toc(S.clock);
end
