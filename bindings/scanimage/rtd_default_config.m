function cfg = rtd_default_config(user)
%RTD_DEFAULT_CONFIG  Complete and check a publisher configuration struct.
%
%   cfg = rtd_default_config(user)
%
%   user : struct (or the path of a JSON file holding one) with any of
%     address             ZeroMQ endpoint (required), e.g. 'tcp://decoder-pc:5555'
%     bind                false (connect; the decoder binds) or true
%     transport           'auto' (default), 'octave', 'python', 'jeromq', 'callback'
%     transport_options   struct passed to rtd_transport_open
%     session_id          default: 'scanimage-' + date and time
%     frame_rate_hz       default 30
%     roi_ids             N ids (required)
%     roi_centres_px      N x 2 [y x] or []
%     plane               default 0
%     source              default 'scanimage'
%     stimulus_shape      [height width] or [] (default [36 64])
%     resend_info_every_s default 1
%     masks               for rtd_si_frame_acquired: sparse N x (Ly*Lx) weights, a .mat
%                         path (rtd_si_setup loads it: bindings/scanimage_masks.py), or
%                         Ly x Lx x N array (weights or logical); rows are normalised
%                         to sum 1 so each value is a weighted ROI mean
%     channel             imaging channel for rtd_si_frame_acquired (default 1)
%   Unknown fields are rejected with an error naming them.
    if ischar(user)
        user = jsondecode(fileread(user));
    end
    cfg = struct('address', '', 'bind', false, 'transport', 'auto', 'transport_options', struct(), ...
                 'session_id', '', 'frame_rate_hz', 30, 'roi_ids', [], 'roi_centres_px', [], ...
                 'plane', 0, 'source', 'scanimage', 'stimulus_shape', [36 64], ...
                 'resend_info_every_s', 1, 'masks', [], 'channel', 1);
    names = fieldnames(user);
    for k = 1:numel(names)
        if ~isfield(cfg, names{k})
            error('rtd:config', 'unknown configuration field ''%s''', names{k});
        end
        cfg.(names{k}) = user.(names{k});
    end
    if isempty(cfg.address)
        error('rtd:config', 'address is required (e.g. ''tcp://decoder-pc:5555'')');
    end
    if isempty(cfg.session_id)
        cfg.session_id = ['scanimage-' datestr(now, 'yyyymmddTHHMMSS')];
    end
    if ~(isscalar(cfg.frame_rate_hz) && cfg.frame_rate_hz > 0 && cfg.frame_rate_hz <= 10000)
        error('rtd:config', 'frame_rate_hz must be in (0, 10000], got %s', mat2str(cfg.frame_rate_hz));
    end
    if isempty(cfg.roi_ids) && ~isempty(cfg.masks)
        cfg.roi_ids = 0:(n_mask_rois(cfg.masks) - 1);
    end
    if isempty(cfg.roi_ids)
        error('rtd:config', 'roi_ids (or masks) are required');
    end
    cfg.bind = logical(cfg.bind);
end

function n = n_mask_rois(masks)
    if ndims(masks) == 3
        n = size(masks, 3);
    else
        n = size(masks, 1);
    end
end
