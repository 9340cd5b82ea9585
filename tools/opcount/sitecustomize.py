"""Opcode counting for `python -m tools.opcodes`: loaded only when this directory is first on PYTHONPATH.

With ZLB_OPCOUNT set to a directory, counts the Python bytecode instructions the main thread
runs (sys.settrace with opcode events; this file's own frames excluded) in two kinds of
segment: "before", from a wake-up (a poll that returned something, or a zlb Waiter receive
that got a message) to the next message sent (its last frame; PUB sockets excluded), and
"after", from that send to the next wait. Writes ZLB_OPCOUNT/<pid>.json at exit: every
counted segment's total (and, in a zlb balancer, its hop: a submission or a result) and, per
segment kind, opcodes by function summed over them.
Counts do not depend on the machine's load, unlike every timing: they say what a change
removed from a hop, not what it saved in microseconds.
"""

from __future__ import annotations

import os

if os.environ.get("ZLB_OPCOUNT"):
    import atexit
    import collections
    import json
    import signal
    import sys

    import zmq

    _HERE = os.path.abspath(__file__)
    _state: dict = {"kind": None, "n": 0, "hop": ""}
    _by_function: collections.Counter = collections.Counter()
    _segments: dict[str, list] = {"before": [], "after": []}
    _functions: dict[str, collections.Counter] = {"before": collections.Counter(), "after": collections.Counter()}

    def _local(frame, event, _arg):
        if event == "opcode" and _state["kind"] is not None:
            _state["n"] += 1
            code = frame.f_code
            _by_function[(code.co_name, os.path.basename(code.co_filename))] += 1
        return _local

    def _global(frame, _event, _arg):
        if frame.f_code.co_filename == _HERE:
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return _local

    # A zlb balancer's segment is one hop or the other by the drain it ran (its name before and after
    # the balancer held its parts instead of mixing them in, so older checkouts count too).
    _HOPS = (
        (("drain", "clients.py"), "submit"),
        (("_drain_frontend", "clients.py"), "submit"),
        (("drain", "node_side.py"), "result"),
        (("_drain_backend", "node_side.py"), "result"),
    )

    def _hop_of(functions) -> str:
        return next((hop for function, hop in _HOPS if function in functions), "")

    def _close(next_kind: str | None) -> None:
        kind = _state["kind"]
        _state["kind"] = None  # what runs from here (a Counter's update) is the count's, not the process's
        if kind is not None:
            if kind == "before":  # the segment after a send belongs to the hop before it
                _state["hop"] = _hop_of(_by_function)
            _segments[kind].append([_state["n"], _state["hop"]])
            _functions[kind].update(_by_function)
            if _state["hop"]:  # and by hop, for a balancer's two
                _functions.setdefault(f"{kind}_{_state['hop']}", collections.Counter()).update(_by_function)
        _by_function.clear()
        _state["n"] = 0
        _state["kind"] = next_kind

    _MORE, _PUB = int(zmq.SNDMORE), int(zmq.PUB)
    _types: dict[int, int] = {}

    def _counted(sock, flags) -> bool:
        kind = _types.get(id(sock))
        if kind is None:
            kind = _types[id(sock)] = int(sock.getsockopt(zmq.TYPE))
        return not int(flags) & _MORE and kind != _PUB

    def _sent(sock, flags) -> None:
        if _state["kind"] == "before" and _counted(sock, flags):
            _close("after")

    _Socket = zmq.Socket
    _send, _send_multipart, _socket_poll = _Socket.send, _Socket.send_multipart, _Socket.poll
    _poller_poll = zmq.Poller.poll

    def _counted_send(self, data, flags=0, *args, **kwargs):
        _sent(self, flags)
        return _send(self, data, flags, *args, **kwargs)

    def _counted_send_multipart(self, parts, flags=0, *args, **kwargs):
        _sent(self, 0)
        return _send_multipart(self, parts, flags, *args, **kwargs)

    def _waited(wait, timeout):
        if timeout == 0:  # a look, not a wait: part of the segment it is in
            return wait()
        _close(None)
        got = wait()
        if got:
            _state["kind"] = "before"
        return got

    def _counted_poller_poll(self, timeout=None):
        return _waited(lambda: _poller_poll(self, timeout), timeout)

    def _counted_socket_poll(self, timeout=None, flags=zmq.POLLIN):
        return _waited(lambda: _socket_poll(self, timeout, flags), timeout)

    _Socket.send, _Socket.send_multipart, _Socket.poll = _counted_send, _counted_send_multipart, _counted_socket_poll
    zmq.Poller.poll = _counted_poller_poll

    try:  # zlb's blocking receives, and older checkouts' sends, bypass pyzmq's Python layer (wire/sockets.py)
        import wire.sockets as _wire_sockets
    except ImportError:
        _wire_sockets = None
    _raw_send = getattr(_wire_sockets, "_send", None)
    # Checkouts that call zmq.Socket.send took the wrapper above already; older ones call pyzmq's Cython send.
    if _raw_send is not None and _raw_send is not _Socket.send:

        def _counted_raw_send(sock, data, flags=0):
            _sent(sock, flags)
            return _raw_send(sock, data, flags)

        _wire_sockets._send = _counted_raw_send
    _waiter = getattr(_wire_sockets, "Waiter", None)
    if _waiter is not None:
        _message = _waiter.message

        def _counted_message(self, timeout_ms):
            return _waited(lambda: _message(self, timeout_ms), timeout_ms)

        _waiter.message = _counted_message

    def _write() -> None:
        _close(None)
        out = {
            "segments": _segments,
            "functions": {k: [[n, f, c] for (n, f), c in v.items()] for k, v in _functions.items()},
        }
        with open(os.path.join(os.environ["ZLB_OPCOUNT"], f"{os.getpid()}.json"), "w") as fh:
            json.dump(out, fh)

    atexit.register(_write)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.settrace(_global)
