"""Wire protocol, transport, replay and recording (the only place that imports zmq)."""
