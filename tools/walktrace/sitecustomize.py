"""Walk tracing for `python -m tools.walk`: loaded only when this directory is first on PYTHONPATH.

With ZLB_WALKTRACE set to a directory (and ZLB_WALK_ROOT to the checkout, ZLB_WALK_MARK to
the traced requests' payload prefix), this process profiles its project calls and returns
(walktracer.py) from start, and wraps pyzmq's poll, receive and send to cut them into windows:

- every wake-up (a poll that returned something, or a blocking receive that got a message)
  starts a fresh buffer, its first "running" file the project frame that waited;
- a received frame holding the mark turns that buffer into a window: what the process did
  from the wake-up that brought the traced request (or its result) in;
- a frame holding the mark sent (PUB sockets excepted) passes the request (or its result)
  on; the window ends when the step of the loop that sent it is over: when a return lands
  in the loop's frame (the innermost frame on both the stack that waited and the one that
  sent). What the process runs after that until it waits again (the loop's other steps:
  timers, event publication, its own timing notes) is kept apart as the window's tail.

Each window is appended to ZLB_WALKTRACE/<pid>.jsonl, one JSON object a line, once its
tail ends, with the index of its event at which the send came (sent_at). The client process
does not use this: walk_client.py brackets its own calls.
"""

from __future__ import annotations

import os

if os.environ.get("ZLB_WALKTRACE"):
    import json
    import sys

    # pyzmq's backend and poll internals: older checkouts (--code) send through the Cython socket
    # directly, so the tracer patches there too. A developer tool, never installed (docs/PERFORMANCE.md).
    import zmq
    import zmq.backend
    import zmq.sugar.poll
    from walktracer import Tracer

    _DIR = os.environ["ZLB_WALKTRACE"]
    _MARK = os.environ["ZLB_WALK_MARK"].encode()
    _tracer = Tracer(os.environ["ZLB_WALK_ROOT"])
    _NOBLOCK, _PUB = int(zmq.NOBLOCK), int(zmq.PUB)
    _IDLE, _WINDOW, _FINISHING, _TAIL = 0, 1, 2, 3
    # The loop's frames when it woke (innermost first); the window's events; where the send came.
    _state: dict = {"mode": _IDLE, "start": (None, None), "stack": [], "run": -1, "window": [], "sent_at": 0}
    _types: dict[int, int] = {}

    def _run_of(data: object) -> int | None:
        """The traced run a frame belongs to (the digits after the mark), or None without the mark."""
        if not isinstance(data, bytes):
            try:
                data = bytes(memoryview(data))  # type: ignore[arg-type]  # a zmq.Frame, a bytearray
            except TypeError:
                return None
        at = data.find(_MARK)  # type: ignore[union-attr]
        if at < 0:
            return None
        digits = data[at + len(_MARK) : at + len(_MARK) + 6]  # type: ignore[index]
        return int(digits) if digits.isdigit() else 0

    def _write(tail: list) -> None:
        record = {
            "run": _state["run"],
            "start": list(_state["start"]),
            "events": _state["window"],
            "sent_at": _state["sent_at"],
            "tail": tail,
        }
        with open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _window_ends() -> None:
        """The step that sent the request on is over: the loop's frame has control again."""
        _state["window"] = _tracer.events
        _tracer.events = []
        _state["mode"] = _TAIL

    def _waiting() -> None:
        """The process is about to wait (a poll, a blocking receive)."""
        mode = _state["mode"]
        if mode == _FINISHING:  # waits before control is back in the loop's frame: the window ends here
            _tracer.stop_frame = None
            _window_ends()
            mode = _TAIL
        if mode == _TAIL:
            tail = _tracer.events
            _tracer.events = []
            _state["mode"] = _IDLE
            _state["stack"] = []
            _write(tail)
        elif mode == _WINDOW:
            _tracer.events.append(("w", 0, None, None))  # the request waits inside this process
        else:
            _tracer.events = []

    def _woke() -> None:
        if _state["mode"] == _IDLE:
            _tracer.events = []
            stack = _tracer.project_stack(sys._getframe(1))
            _state["stack"] = stack
            _state["start"] = _tracer.where(stack[0].f_code) if stack else (None, None)

    def _received(data: object) -> None:
        if _state["mode"] == _IDLE:
            run = _run_of(data)
            if run is not None:
                _state.update(mode=_WINDOW, run=run)

    def _sent(sock: zmq.Socket, data: object) -> None:
        if _state["mode"] != _WINDOW:
            return
        kind = _types.get(id(sock))
        if kind is None:
            kind = _types[id(sock)] = int(sock.getsockopt(zmq.TYPE))
        if kind == _PUB or _run_of(data) is None:
            return
        _state["sent_at"] = len(_tracer.events)
        # The loop's frame: the innermost frame both on the stack that waited and on the one that sends.
        waited = {id(f) for f in _state["stack"]}
        now = _tracer.project_stack(sys._getframe(1))
        loop = next((f for f in now if id(f) in waited), None)
        if loop is None or loop is now[0]:
            _window_ends()  # sent from the loop's frame itself (or no frame in common): ends at the send
        else:
            _state["mode"] = _FINISHING
            _tracer.stop_frame, _tracer.on_stop = loop, _window_ends

    _c_recv, _c_send, _sugar_send = zmq.backend.Socket.recv, zmq.backend.Socket.send, zmq.Socket.send

    def _traced_recv(self, flags=0, copy=True, track=False):
        blocking = not int(flags) & _NOBLOCK
        if blocking:
            _waiting()
        data = _c_recv(self, flags, copy=copy, track=track)
        if blocking:
            _woke()
        _received(data)
        return data

    def _traced_sugar_send(self, data, flags=0, copy=True, track=False, **kwargs):
        _sent(self, data)
        return _sugar_send(self, data, flags, copy=copy, track=track, **kwargs)

    class _TracedSocket(zmq.backend.Socket):  # for code that calls the Cython socket's methods directly
        def send(self, data, flags=0, copy=True, track=False):
            _sent(self, data)
            return _c_send(self, data, flags, copy=copy, track=track)

        recv = _traced_recv

    zmq.Socket.recv, zmq.Socket.send = _traced_recv, _traced_sugar_send
    zmq.backend.Socket = _TracedSocket

    _zmq_poll = zmq.sugar.poll.zmq_poll

    def _traced_zmq_poll(sockets, timeout=-1):
        _waiting()
        ready = _zmq_poll(sockets, timeout)
        if ready:
            _woke()
        return ready

    zmq.sugar.poll.zmq_poll = zmq.zmq_poll = zmq.backend.zmq_poll = _traced_zmq_poll

    _tracer.install()
