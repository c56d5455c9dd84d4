function parts = rtd_encode_session_start(session_id, seq, t_ns, info)
%RTD_ENCODE_SESSION_START  Wire protocol v1 "session_start" message (cell of uint8 rows).
%
%   parts = rtd_encode_session_start(session_id, seq, t_ns, info)
%
%   session_id : char, 1..256 characters
%   seq        : message sequence number (converted to uint64)
%   t_ns       : send time in ns on the publisher's clock (converted to int64)
%   info       : struct with fields
%       frame_rate_hz  (double, (0, 10000])
%       roi_ids        (N integer ids, sent as int64)
%       plane          (optional, default 0)
%       roi_centres_px (optional N x 2 [y x] in FOV pixels, sent as float32)
%       is_activity    (optional logical, default false)
%       source         (optional char, default 'scanimage')
%       stimulus_shape (optional [height width], default none)
    n = numel(info.roi_ids);
    if n < 1
        error('rtd:encode', 'session_start needs at least one ROI id');
    end
    h = rtd_header('session_start', session_id, seq, t_ns);
    h.rate_hz = double(info.frame_rate_hz);
    h.plane = int64(field_or(info, 'plane', 0));
    h.n_rois = int64(n);
    h.activity = logical(field_or(info, 'is_activity', false));
    h.source = char(field_or(info, 'source', 'scanimage'));
    stim = field_or(info, 'stimulus_shape', []);
    if ~isempty(stim)
        h.stim = {int64(stim(1)), int64(stim(2))};
    end
    bufs = {{'roi_ids', '<i8', {int64(n)}}};
    payload = {rtd_le_bytes(info.roi_ids, 'int64')};
    centres = field_or(info, 'roi_centres_px', []);
    if ~isempty(centres)
        if ~isequal(size(centres), [n 2])
            error('rtd:encode', 'roi_centres_px must be %d x 2, got %s', n, mat2str(size(centres)));
        end
        bufs{end + 1} = {'roi_centres', '<f4', {int64(n), int64(2)}};
        payload{end + 1} = rtd_le_bytes(centres.', 'single');  % row-major (y0 x0 y1 x1 ...)
    end
    h.bufs = bufs;
    parts = [{rtd_msgpack(h)}, payload];
end

function v = field_or(s, name, default)
    if isfield(s, name) && ~isempty(s.(name))
        v = s.(name);
    else
        v = default;
    end
end
