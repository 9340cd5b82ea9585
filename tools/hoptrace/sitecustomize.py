"""Hop tracing for `python -m tools.hops`: loaded only when this directory is first on PYTHONPATH.

With ZLB_HOPTRACE set to a directory, wraps pyzmq's poll and send, zlb's blocking
receive (Waiter), and in older checkouts wire.sockets' own send past pyzmq's
Python layer, to note when this process woke
("W": a poll that returned something, or a blocking receive that got a message,
which puts that receive on the wake-up's side) and when it sent a message ("S":
its last frame; PUB sockets excluded), in monotonic nanoseconds, in memory;
writes them to ZLB_HOPTRACE/<pid>.json at exit.
The wrappers cost about a microsecond per call: the same for every broker traced.
"""

from __future__ import annotations

import os

if os.environ.get("ZLB_HOPTRACE"):
    import atexit
    import json
    import signal
    import sys
    import time

    import zmq

    _notes: list[tuple[str, int]] = []
    _note = _notes.append
    _clock = time.monotonic_ns
    _MORE, _PUB = int(zmq.SNDMORE), int(zmq.PUB)
    _types: dict[int, int] = {}

    def _counted(sock: zmq.Socket, flags: int) -> bool:
        kind = _types.get(id(sock))
        if kind is None:
            kind = _types[id(sock)] = int(sock.getsockopt(zmq.TYPE))
        return not int(flags) & _MORE and kind != _PUB

    _Socket = zmq.Socket
    _send, _send_multipart, _socket_poll, _poller_poll = (
        _Socket.send,
        _Socket.send_multipart,
        _Socket.poll,
        zmq.Poller.poll,
    )

    def _traced_send(self, data, flags=0, *args, **kwargs):
        if _counted(self, flags):
            _note(("S", _clock()))
        return _send(self, data, flags, *args, **kwargs)

    def _traced_send_multipart(self, parts, flags=0, *args, **kwargs):
        if _counted(self, 0):
            _note(("S", _clock()))
        return _send_multipart(self, parts, flags, *args, **kwargs)

    def _traced_poller_poll(self, timeout=None):
        ready = _poller_poll(self, timeout)
        if ready:
            _note(("W", _clock()))
        return ready

    def _traced_socket_poll(self, timeout=None, flags=zmq.POLLIN):
        ready = _socket_poll(self, timeout, flags)
        if ready:
            _note(("W", _clock()))
        return ready

    _Socket.send, _Socket.send_multipart, _Socket.poll = _traced_send, _traced_send_multipart, _traced_socket_poll
    zmq.Poller.poll = _traced_poller_poll

    try:  # zlb's blocking receives, and older checkouts' sends, bypass pyzmq's Python layer (wire/sockets.py)
        import wire.sockets as _wire_sockets
    except ImportError:
        _wire_sockets = None
    _raw_send = getattr(_wire_sockets, "_send", None)
    # Checkouts that call zmq.Socket.send took the wrapper above already; older ones call pyzmq's Cython send.
    if _raw_send is not None and _raw_send is not _Socket.send:

        def _traced_raw_send(sock, data, flags=0):
            if _counted(sock, flags):
                _note(("S", _clock()))
            return _raw_send(sock, data, flags)

        _wire_sockets._send = _traced_raw_send
    _waiter = getattr(_wire_sockets, "Waiter", None)
    if _waiter is not None:  # the Client and an inline node wait in a blocking receive, not a poll
        _message = _waiter.message

        def _traced_message(self, timeout_ms):
            message = _message(self, timeout_ms)
            if message is not None:
                _note(("W", _clock()))
            return message

        _waiter.message = _traced_message

    def _write() -> None:
        with open(os.path.join(os.environ["ZLB_HOPTRACE"], f"{os.getpid()}.json"), "w") as fh:
            json.dump(_notes, fh)

    atexit.register(_write)
    # A SIGTERM with no handler would skip atexit; zlb's own processes install theirs later.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
