"""The profiler behind `python -m tools.walk`: python-level calls and returns in a checkout's own files.

Loaded by this directory's sitecustomize (the balancer and the node) and by walk_client.py
(the Client). Nothing here imports the project: it only looks at code objects' file names.
"""

from __future__ import annotations

import os
import sys
import threading
from types import CodeType, FrameType
from typing import Any

# The checkout's own code: a file counts when its path below the checkout starts with one of these.
PROJECT_DIRS = ("wire", "balancer", "client_node", "server_node", "zlb", "monitor", "http_gateway")

# One recorded event: (kind, thread, file, function). kind "c": a call, the callee's file and
# function run next; "r": a return, the nearest project frame below it runs next (None, None
# when none: the code that called into the project, e.g. a script using the Client);
# "w": the process went back to waiting (a poll or a blocking receive) inside a window.
Event = tuple[str, int, "str | None", "str | None"]


class Tracer:
    """Records project calls and returns into `events` while installed with sys.setprofile.

    With `stop_frame` set, `on_stop()` is called once a return lands in that frame.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root) + os.sep
        self._where: dict[CodeType, tuple[str, str] | None] = {}
        self.events: list[Event] = []
        self.stop_frame: FrameType | None = None
        self.on_stop: Any = None

    def where(self, code: CodeType) -> tuple[str, str] | None:
        """(file relative to the checkout, function) for project code, else None; cached per code object."""
        try:
            return self._where[code]
        except KeyError:
            pass
        found = None
        name = code.co_filename
        if name and not name.startswith("<"):
            path = os.path.realpath(name)
            if path.startswith(self.root):
                rel = path[len(self.root) :].replace(os.sep, "/")
                if rel.split("/", 1)[0] in PROJECT_DIRS:
                    found = (rel, getattr(code, "co_qualname", code.co_name))
        self._where[code] = found
        return found

    def running(self, frame: FrameType | None) -> tuple[str | None, str | None]:
        """The project (file, function) nearest the top of the stack from `frame` down, or (None, None)."""
        frame = self.project_frame(frame)
        return (None, None) if frame is None else self.where(frame.f_code)  # type: ignore[return-value]

    def project_frame(self, frame: FrameType | None) -> FrameType | None:
        """The project frame nearest the top of the stack from `frame` down."""
        where = self.where
        while frame is not None and where(frame.f_code) is None:
            frame = frame.f_back
        return frame

    def project_stack(self, frame: FrameType | None) -> list[FrameType]:
        """The project frames from `frame` down to the bottom of the stack, innermost first."""
        out, where = [], self.where
        while frame is not None:
            if where(frame.f_code) is not None:
                out.append(frame)
            frame = frame.f_back
        return out

    def profile(self, frame: FrameType, event: str, _arg: Any) -> None:
        """The sys.setprofile hook; C calls (c_call, c_return, c_exception) are ignored."""
        if event == "call":
            found = self.where(frame.f_code)
            if found is not None:
                self.events.append(("c", threading.get_ident(), *found))
        elif event == "return" and self.where(frame.f_code) is not None:
            below = self.project_frame(frame.f_back)
            found = (None, None) if below is None else self.where(below.f_code)
            self.events.append(("r", threading.get_ident(), *found))  # type: ignore[misc]
            if below is not None and below is self.stop_frame:
                self.stop_frame = None
                self.on_stop()

    def install(self) -> None:
        """Profile this thread and every thread started from now on."""
        sys.setprofile(self.profile)
        threading.setprofile(self.profile)

    def uninstall(self) -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
