function t = rtd_transport_open(kind, address, do_bind, options)
%RTD_TRANSPORT_OPEN  Open a ZeroMQ PUB transport for rt-decoder messages.
%
%   t = rtd_transport_open(kind, address, do_bind)
%   t = rtd_transport_open(kind, address, do_bind, options)
%
%   kind    : 'auto' | 'octave' | 'python' | 'jeromq' | 'callback'
%       'octave'   GNU Octave's zeromq package (Debian: octave-zeromq), used in CI
%       'python'   MATLAB's Python interface calling pyzmq (pyenv must point at a Python
%                  with pyzmq installed: `pip install pyzmq`)
%       'jeromq'   Java ZeroMQ (JeroMQ jar on MATLAB's Java class path, see options.jar)
%       'callback' no socket: options.send_fn(parts) is called for every message
%       'auto'     octave under Octave, else python if pyzmq imports, else jeromq
%   address : ZeroMQ endpoint, e.g. 'tcp://decoder-pc:5555'
%   do_bind : true to bind (the decoder connects), false to connect (the decoder binds)
%   options : optional struct: sndhwm (messages, default 1000), jar (path to jeromq.jar),
%             send_fn (for 'callback')
%
%   The returned struct is used with rtd_transport_send(t, parts) and
%   rtd_transport_close(t). This is the only file that knows the ZeroMQ bindings.
    if nargin < 4
        options = struct();
    end
    if strcmp(kind, 'auto')
        kind = auto_kind();
    end
    t = struct('kind', kind, 'address', address, 'handle', [], 'context', [], 'send_fn', []);
    switch kind
        case 'octave'
            pkg('load', 'zeromq');
            sock = zmq_socket(ZMQ_PUB);
            if isfield(options, 'sndhwm') && exist('ZMQ_SNDHWM', 'builtin')
                zmq_setsockopt(sock, ZMQ_SNDHWM, options.sndhwm);
            end
            if do_bind
                ok = zmq_bind(sock, address);
            else
                ok = zmq_connect(sock, address);
            end
            if ~ok
                error('rtd:transport', 'cannot %s %s', ternary(do_bind, 'bind', 'connect'), address);
            end
            t.handle = sock;
        case 'python'
            zmq = py.importlib.import_module('zmq');
            ctx = zmq.Context.instance();
            sock = ctx.socket(zmq.PUB);
            if isfield(options, 'sndhwm')
                sock.setsockopt(zmq.SNDHWM, int32(options.sndhwm));
            end
            sock.setsockopt(zmq.LINGER, int32(1000));
            if do_bind
                sock.bind(address);
            else
                sock.connect(address);
            end
            t.handle = sock;
            t.context = ctx;
        case 'jeromq'
            if isfield(options, 'jar')
                javaaddpath(options.jar);
            end
            ctx = org.zeromq.ZContext();
            sock = ctx.createSocket(org.zeromq.SocketType.PUB);
            if isfield(options, 'sndhwm')
                sock.setSndHWM(options.sndhwm);
            end
            sock.setLinger(1000);
            if do_bind
                sock.bind(address);
            else
                sock.connect(address);
            end
            t.handle = sock;
            t.context = ctx;
        case 'callback'
            if ~isfield(options, 'send_fn')
                error('rtd:transport', 'the callback transport needs options.send_fn');
            end
            t.send_fn = options.send_fn;
        otherwise
            error('rtd:transport', 'unknown transport kind ''%s''', kind);
    end
end

function kind = auto_kind()
    if exist('OCTAVE_VERSION', 'builtin')
        kind = 'octave';
        return
    end
    try
        py.importlib.import_module('zmq');
        kind = 'python';
    catch
        kind = 'jeromq';
    end
end

function v = ternary(c, a, b)
    if c
        v = a;
    else
        v = b;
    end
end
