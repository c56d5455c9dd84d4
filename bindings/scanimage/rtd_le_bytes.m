function b = rtd_le_bytes(values, cls)
%RTD_LE_BYTES  Raw little-endian bytes (uint8 row) of VALUES converted to class CLS.
%
%   b = rtd_le_bytes(values, 'single')   % "<f4" payload
%   b = rtd_le_bytes(values, 'int64')    % "<i8" payload
%   Values are taken in linear (column-major) order; pass a transposed matrix to get
%   row-major order (the protocol's 2-D buffers are row-major).
    v = cast(reshape(values, 1, []), cls);
    persistent little
    if isempty(little)
        t = typecast(uint16(1), 'uint8');
        little = t(1) == 1;
    end
    if ~little
        v = swapbytes(v);
    end
    if isempty(v)
        b = uint8([]);
    else
        b = reshape(typecast(v, 'uint8'), 1, []);
    end
end
