function parts = rtd_encode_frame(session_id, seq, frame_index, acq_ns, values, behaviour)
%RTD_ENCODE_FRAME  Wire protocol v1 "frame" message: one float32 value per ROI.
%
%   parts = rtd_encode_frame(session_id, seq, frame_index, acq_ns, values)
%   parts = rtd_encode_frame(session_id, seq, frame_index, acq_ns, values, behaviour)
%
%   frame_index : acquisition frame number (>= 0, sent as int)
%   acq_ns      : acquisition time in ns on the source clock (header t_ns)
%   values      : N ROI values in session ROI order (sent as "<f4")
%   behaviour   : optional 4 numbers (pupil_dilation, running_speed, pupil_x, pupil_y)
    n = numel(values);
    if n < 1
        error('rtd:encode', 'a frame needs at least one value');
    end
    h = rtd_header('frame', session_id, seq, acq_ns);
    h.frame = int64(frame_index);
    if nargin >= 6 && ~isempty(behaviour)
        if numel(behaviour) ~= 4
            error('rtd:encode', 'behaviour must have 4 values, got %d', numel(behaviour));
        end
        h.beh = num2cell(double(reshape(behaviour, 1, [])));
    end
    h.bufs = {{'values', '<f4', {int64(n)}}};
    parts = {rtd_msgpack(h), rtd_le_bytes(values, 'single')};
end
