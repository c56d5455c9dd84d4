function out = rtd_roi_means(arg, masks)
%RTD_ROI_MEANS  Weighted ROI means of an image with masks prepared once.
%
%   rtd_roi_means('set', masks)   prepare: masks is a sparse or full N x (Ly*Lx) weight
%                                 matrix (column-major pixel order, as img(:)), or an
%                                 Ly x Lx x N array of weights / logical masks
%   vals = rtd_roi_means(img)     N x 1 double: vals(i) = sum(w_i .* img(:)) / sum(w_i)
%
%   One sparse matrix-vector product per frame; the weights are normalised at 'set'.
    persistent W
    if ischar(arg)
        if ~strcmp(arg, 'set')
            error('rtd:masks', 'unknown command ''%s''', arg);
        end
        if ndims(masks) == 3
            n = size(masks, 3);
            masks = reshape(double(masks), [], n).';
        end
        W = sparse(double(masks));
        s = full(sum(W, 2));
        if any(s <= 0)
            error('rtd:masks', 'ROI(s) %s have empty masks', mat2str(find(s <= 0).'));
        end
        W = spdiags(1 ./ s, 0, numel(s), numel(s)) * W;
        out = size(W, 1);
        return
    end
    if isempty(W)
        error('rtd:masks', 'no masks: call rtd_roi_means(''set'', masks) (or give cfg.masks) first');
    end
    if numel(arg) ~= size(W, 2)
        error('rtd:masks', 'image has %d pixels but the masks expect %d', numel(arg), size(W, 2));
    end
    out = full(W * double(arg(:)));
end
