function rtd_si_setup(src, evt, varargin) %#ok<INUSD>
%RTD_SI_SETUP  ScanImage user function (event 'acqModeStart'): open the publisher and
%   send session_start.
%
%   In ScanImage's User Functions table: Event 'acqModeStart', function 'rtd_si_setup',
%   arguments {'C:\rt-decoder\rig.json'} (a JSON config; see rtd_default_config).
%   From code or tests: rtd_si_setup(hSI, [], cfg_struct).
%
%   When the config has no frame_rate_hz, ScanImage's hRoiManager.scanFrameRate is used.
%   When it has masks (an array, or the path of a .mat file written by
%   `python -m bindings.scanimage_masks SUITE2P_PLANE OUT.mat`), they are prepared once
%   here for rtd_si_frame_acquired.
    user = varargin{1};
    if ischar(user)
        user = jsondecode(fileread(user));
    end
    if isfield(user, 'masks') && ischar(user.masks)
        % a .mat file written by `python -m bindings.scanimage_masks` (masks, roi_ids, ...)
        m = load(user.masks);
        user.masks = m.masks;
        if ~isfield(user, 'roi_ids') && isfield(m, 'roi_ids')
            user.roi_ids = m.roi_ids;
        end
        if ~isfield(user, 'roi_centres_px') && isfield(m, 'roi_centres_px')
            user.roi_centres_px = m.roi_centres_px;
        end
    end
    if ~isfield(user, 'frame_rate_hz') && ~isempty(src) && isfield_or_prop(src, 'hRoiManager')
        user.frame_rate_hz = src.hRoiManager.scanFrameRate;
    end
    cfg = rtd_default_config(user);
    if ~isempty(cfg.masks)
        rtd_roi_means('set', cfg.masks);
    end
    rtd_si_error_count('reset');
    rtd_publisher('open', cfg);
    rtd_publisher('start');
end

function tf = isfield_or_prop(obj, name)
    if isstruct(obj)
        tf = isfield(obj, name);
    else
        tf = isprop(obj, name);
    end
end
