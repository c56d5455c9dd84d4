function out = rtd_msgpack(value)
%RTD_MSGPACK  Encode a MATLAB/Octave value as msgpack bytes (uint8 row vector).
%
%   bytes = rtd_msgpack(value)
%
%   The minimal encoder the rt-decoder wire protocol needs (plain MATLAB, no toolbox):
%     scalar struct            -> map (field names are the keys, in field order)
%     char row vector          -> str (UTF-8)
%     logical scalar           -> bool
%     int8..int64, uint8..uint64 scalar -> int (exact, incl. full uint64 / int64 range)
%     double / single scalar   -> float 64
%     cell array               -> array of its elements (in linear order)
%     numeric/logical vector   -> array of its elements
%     [] (0x0 double)          -> nil
%   Integers must be integer classes: a double is always sent as a float, so header
%   fields such as seq, t_ns, frame, n_rois are passed as int64/uint64.
%   Runs unchanged in MATLAB (R2016b+) and GNU Octave (6+).

    if isstruct(value)
        if numel(value) ~= 1
            error('rtd:msgpack', 'only scalar structs can be encoded as maps');
        end
        keys = fieldnames(value);
        out = map_header(numel(keys));
        for k = 1:numel(keys)
            out = [out, encode_str(keys{k}), rtd_msgpack(value.(keys{k}))]; %#ok<AGROW>
        end
    elseif ischar(value)
        out = encode_str(value);
    elseif iscell(value)
        out = array_header(numel(value));
        for k = 1:numel(value)
            out = [out, rtd_msgpack(value{k})]; %#ok<AGROW>
        end
    elseif isempty(value) && isa(value, 'double')
        out = uint8(192);  % 0xc0 nil
    elseif ~isscalar(value)
        out = array_header(numel(value));
        for k = 1:numel(value)
            out = [out, rtd_msgpack(value(k))]; %#ok<AGROW>
        end
    elseif islogical(value)
        if value
            out = uint8(195);  % 0xc3 true
        else
            out = uint8(194);  % 0xc2 false
        end
    elseif isinteger(value)
        out = encode_int(value);
    elseif isfloat(value)
        out = [uint8(203), be_bytes(typecast(double(value), 'uint8'))];  % 0xcb float 64
    else
        error('rtd:msgpack', 'cannot encode a value of class %s', class(value));
    end
end

function b = be_bytes(le)
% native byte order -> big-endian (msgpack is big-endian)
    if host_is_little_endian()
        b = le(end:-1:1);
    else
        b = le;
    end
    b = reshape(b, 1, []);
end

function tf = host_is_little_endian()
    persistent little
    if isempty(little)
        little = typecast(uint16(1), 'uint8');
        little = little(1) == 1;
    end
    tf = little;
end

function out = encode_int(v)
    if v >= 0
        u = uint64(v);
        if u < 128
            out = uint8(u);
        elseif u <= 255
            out = [uint8(204), uint8(u)];
        elseif u <= 65535
            out = [uint8(205), be_bytes(typecast(uint16(u), 'uint8'))];
        elseif u <= 4294967295
            out = [uint8(206), be_bytes(typecast(uint32(u), 'uint8'))];
        else
            out = [uint8(207), be_bytes(typecast(u, 'uint8'))];
        end
    else
        s = int64(v);
        if s >= -32
            out = typecast(int8(s), 'uint8');                   % negative fixint
        elseif s >= -128
            out = [uint8(208), typecast(int8(s), 'uint8')];
        elseif s >= -32768
            out = [uint8(209), be_bytes(typecast(int16(s), 'uint8'))];
        elseif s >= -2147483648
            out = [uint8(210), be_bytes(typecast(int32(s), 'uint8'))];
        else
            out = [uint8(211), be_bytes(typecast(s, 'uint8'))];
        end
    end
end

function out = encode_str(s)
    if isempty(s)
        bytes = uint8([]);
    elseif exist('OCTAVE_VERSION', 'builtin')
        bytes = uint8(s);  % Octave's char arrays already hold UTF-8 bytes
    else
        bytes = uint8(unicode2native(s, 'UTF-8'));  % MATLAB's hold UTF-16 code units
    end
    bytes = reshape(bytes, 1, []);
    n = numel(bytes);
    if n < 32
        out = [uint8(160 + n), bytes];
    elseif n <= 255
        out = [uint8(217), uint8(n), bytes];
    elseif n <= 65535
        out = [uint8(218), be_bytes(typecast(uint16(n), 'uint8')), bytes];
    else
        out = [uint8(219), be_bytes(typecast(uint32(n), 'uint8')), bytes];
    end
end

function out = array_header(n)
    if n < 16
        out = uint8(144 + n);
    elseif n <= 65535
        out = [uint8(220), be_bytes(typecast(uint16(n), 'uint8'))];
    else
        out = [uint8(221), be_bytes(typecast(uint32(n), 'uint8'))];
    end
end

function out = map_header(n)
    if n < 16
        out = uint8(128 + n);
    elseif n <= 65535
        out = [uint8(222), be_bytes(typecast(uint16(n), 'uint8'))];
    else
        out = [uint8(223), be_bytes(typecast(uint32(n), 'uint8'))];
    end
end
