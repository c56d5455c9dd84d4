function rtd_si_frame_acquired(src, evt, varargin) %#ok<INUSD>
%RTD_SI_FRAME_ACQUIRED  ScanImage user function (event 'frameAcquired'): compute the
%   weighted ROI means of the newest frame from the masks given to rtd_si_setup and
%   publish them with ScanImage's frame number and timestamp.
%
%   Reads src.hDisplay.lastStripeData (frameNumberAcq, frameTimestamp in s since the
%   acquisition start, roiData{1}.imageData{channel}{1}); the frame index sent is
%   frameNumberAcq - 1 (ScanImage counts from 1, the protocol from 0) and acq_ns is
%   round(frameTimestamp * 1e9). Errors are counted, never thrown into ScanImage.
    try
        S = rtd_publisher('state');
        if isempty(S)
            return
        end
        [frame_number, timestamp_s, img] = stripe_data(src, S.cfg.channel);
        vals = rtd_roi_means(img);
        rtd_publisher('frame', int64(frame_number) - 1, int64(round(timestamp_s * 1e9)), vals);
    catch err
        rtd_si_error_count('add', err);
    end
end

function [frame_number, timestamp_s, img] = stripe_data(src, channel)
    sd = src.hDisplay.lastStripeData;
    frame_number = sd.frameNumberAcq(1);
    timestamp_s = sd.frameTimestamp(1);
    rd = sd.roiData{1};
    chans = rd.channels;
    k = find(chans == channel, 1);
    if isempty(k)
        error('rtd:frames', 'channel %d is not among the acquired channels %s', channel, mat2str(chans));
    end
    img = rd.imageData{k}{1};
end
