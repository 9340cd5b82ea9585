"""One request's walk through the code: which files it runs in, and how often it moves between them.

    python -m tools.walk                      # this checkout: one request's walk, counted and shown
    python -m tools.walk --runs 5 --json      # five requests, each counted, with the min and median
    python -m tools.walk --code /tmp/old      # another checkout (e.g. a worktree of an older commit)

Method: a real balancer, one `echo` node and a Client run as three processes, each profiling the
python-level calls and returns of functions in the checkout's own packages (sys.setprofile; C
calls, the standard library and generated code such as a dataclass's __init__ are left out);
after a warm-up, one request is traced in the Client from the call of `Client.submit` to the
return of `Pending.result`, and in the balancer and the node from the wake-up that brings the
request (or its result) in until the loop's step that sent it on returns to the loop. A move is
a change of the running project file between consecutive events (a call from a.py into b.py is
one move, the return to a.py another); a call-and-return is a call into another file that
returns to the caller's file with no cross-file move in between (two moves, counted as one
pair); files are the distinct project files the walk runs in, and the total adds the three
processes' moves and takes the union of their files.

How the windows are cut (tools/walktrace/sitecustomize.py): the traced request's payload carries
a unique mark, which passes through the balancer as an opaque frame and comes back from the
echo handler; pyzmq's poll, receive and send are wrapped. A process's window opens at the
wake-up (a poll that returned something, or a blocking receive that got a message) in which a
frame with the mark is received; the send of a frame with the mark passes the request on, and
the window closes when control returns to the loop's frame (the innermost frame both on the
stack that waited and on the one that sent), so the whole step that sent it counts: the
balancer answers a lone result before it keeps the books, and those books are the request's
too. The balancer has two windows (client in, work out to the node; node in, result out to the
client), the node one. What a process runs after that until it waits again (the loop's other
steps: timers, event publication, its timing notes) is the window's tail, reported apart and
not counted; `moves_to_send` counts each window only up to its send (the request's critical
path). Selecting by a mark in the bytes needs no knowledge of the balancer's code, so the same
tool counts a refactored balancer. Once warm, the walk is the same from one request to the
next except for timers: the processes run with a long heartbeat (--heartbeat-ms) and a pause
before each traced request, so no heartbeat, expiry check or event publication falls inside a
window; a timer-like function that still does is reported.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

WALKTRACE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "walktrace")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLES = ("client", "balancer", "node")
# Function names that belong to a timer's path rather than a request's (reported when inside a window).
TIMER_NAMES = re.compile(r"publish|_tick|expire|sweep|heartbeat|keep_alive|record_sample|roll_loop|age_routes")
STOP_WAIT_S = 3.0


# ---- counting -----------------------------------------------------------------------------


def count_window(start: list[Any], events: list[list[Any]]) -> dict[str, Any]:
    """Moves, call-and-return pairs, files and the walk (runs of one file) of one window's events.

    `start` is the (file, function) running when the window opened (None, None for the code
    that called into the project). Each thread is followed apart; a "w" event (the process
    waited inside the window) changes nothing.
    """
    threads: dict[int, list[tuple[str, str | None, str | None]]] = {}
    first = None
    for kind, tid, file, func in events:
        if kind == "w":
            continue
        if first is None:
            first = tid
        seq = threads.setdefault(tid, [("s", *start)] if tid == first else [("s", None, None)])
        seq.append((kind, file, func))
    moves = pairs = 0
    files: set[str] = set()
    walk: list[dict[str, Any]] = []
    for seq in threads.values():
        runs: list[dict[str, Any]] = []
        for kind, file, func in seq:
            if runs and runs[-1]["file"] == file:
                if func is not None and func not in runs[-1]["funcs"]:
                    runs[-1]["funcs"].append(func)
                continue
            runs.append({"file": file, "funcs": [] if func is None else [func], "by": kind})
        for i, run in enumerate(runs):
            if run["file"] is None:
                continue
            files.add(run["file"])
            if i > 0 and runs[i - 1]["file"] is not None:
                moves += 1
            if (
                0 < i < len(runs) - 1
                and run["by"] == "c"
                and runs[i + 1]["by"] == "r"
                and runs[i - 1]["file"] is not None
                and runs[i - 1]["file"] == runs[i + 1]["file"]
            ):
                pairs += 1
                run["leaf"] = True
        walk.extend(runs)
    return {"moves": moves, "call_and_return": pairs, "files": sorted(files), "walk": walk}


def count_process(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """A process's figures for one traced request: its windows counted and added up."""
    counted, files, tail_files = [], set(), set()
    timers: list[str] = []
    for w in windows:
        c = count_window(w["start"], w["events"])
        to_send = count_window(w["start"], w["events"][: w.get("sent_at", len(w["events"]))])
        last = c["walk"][-1] if c["walk"] else {"file": None, "funcs": []}
        at_send = [last["file"], last["funcs"][-1] if last["funcs"] else None]
        tail = count_window(at_send, w.get("tail", []))
        files.update(c["files"])
        tail_files.update(tail["files"])
        timers += sorted({f"{e[2]}:{e[3]}" for e in w["events"] if e[0] == "c" and TIMER_NAMES.search(e[3] or "")})
        counted.append(
            {
                "moves": c["moves"],
                "call_and_return": c["call_and_return"],
                "files": len(c["files"]),
                "events": sum(1 for e in w["events"] if e[0] != "w"),
                "waits": sum(1 for e in w["events"] if e[0] == "w"),
                "moves_to_send": to_send["moves"],
                "walk": c["walk"],
                "tail_moves": tail["moves"],
                "tail_events": len(w.get("tail", [])),
                "tail_walk": tail["walk"],
            }
        )
    return {
        "files": len(files),
        "moves": sum(c["moves"] for c in counted),
        "call_and_return": sum(c["call_and_return"] for c in counted),
        "file_list": sorted(files),
        "moves_to_send": sum(c["moves_to_send"] for c in counted),
        "tail_moves": sum(c["tail_moves"] for c in counted),
        "tail_files_not_in_window": sorted(tail_files - files),
        "timer_calls_in_window": timers,
        "windows": counted,
    }


def count_run(per_role: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    processes = {role: count_process(per_role.get(role, [])) for role in ROLES}
    files = sorted(set().union(*(set(p["file_list"]) for p in processes.values())))
    total = {
        "files": len(files),
        "moves": sum(p["moves"] for p in processes.values()),
        "call_and_return": sum(p["call_and_return"] for p in processes.values()),
        "moves_to_send": sum(p["moves_to_send"] for p in processes.values()),
        "file_list": files,
    }
    return {"total": total, "processes": processes}


# ---- running the processes ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs: list[subprocess.Popen], nudge: str | None = None) -> None:
    """SIGTERM each process this tool started (by its pid), then SIGKILL what is left after a bound.

    With a long heartbeat a loop sleeps in its poll for up to a heartbeat, and a signal's handler
    only sets a flag: `nudge` (the balancer's frontend) gets an empty message every few ms until
    they are gone, so the balancer wakes, winds down and tells the node, which wakes too.
    """
    for proc in procs:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_WAIT_S
    sock = None
    if nudge is not None:
        import zmq

        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(nudge)
    try:
        while time.monotonic() < deadline and any(proc.poll() is None for proc in procs):
            if sock is not None:
                try:
                    sock.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    pass
            time.sleep(0.02)
    finally:
        if sock is not None:
            sock.close(linger=0)
    for proc in procs:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=STOP_WAIT_S)


def _tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()[-n:]
    except OSError:
        return ""


def trace(code: str, runs: int, warmup: int, heartbeat_ms: int, gap_s: float, timeout_s: float) -> list[Any]:
    """Run balancer, node and client from `code` traced; per traced run, each role's windows."""
    code = os.path.realpath(code)
    mark = f"zlb-walk-{secrets.token_hex(8)}-"
    ports = {role: free_port() for role in ("frontend", "backend", "events", "control")}
    ep = {role: f"tcp://127.0.0.1:{port}" for role, port in ports.items()}
    py = sys.executable
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="zlb-walk-") as work:
        trace_dir = os.path.join(work, "trace")
        os.mkdir(trace_dir)
        path = os.pathsep.join(p for p in (WALKTRACE_DIR, code, os.environ.get("PYTHONPATH", "")) if p)
        base = {k: v for k, v in os.environ.items() if not k.startswith("ZLB_")}
        base.update(PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1", XDG_STATE_HOME=work)
        traced = {**base, "ZLB_WALKTRACE": trace_dir, "ZLB_WALK_ROOT": code, "ZLB_WALK_MARK": mark}
        hb = ["--heartbeat-ms", str(heartbeat_ms)]

        def start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
            out = open(os.path.join(work, f"{name}.log"), "wb")  # closed once the process has it
            try:
                proc = subprocess.Popen(argv, cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT)
            finally:
                out.close()
            procs.append(proc)
            return proc

        try:
            balancer = start(
                "balancer",
                [py, "-m", "zlb", "balancer", *(f"--{r}={ep[r]}" for r in ep), "--log-file=", "--grace-s=0", *hb],
                traced,
            )
            node_argv = [py, "-m", "zlb", "server", f"--backend={ep['backend']}", "--id=0", "--handler=echo"]
            node = start("node", [*node_argv, "--grace-s=0", *hb], traced)
            out = os.path.join(work, "client.json")
            client_argv = [py, os.path.join(WALKTRACE_DIR, "walk_client.py"), ep["frontend"], code, out]
            client_argv += ["--mark", mark, "--warmup", str(warmup), "--runs", str(runs), "--gap-s", str(gap_s)]
            client_argv += ["--timeout-s", str(timeout_s)]
            client = start("client", client_argv, base)
            deadline = time.monotonic() + timeout_s * 4 + runs * (gap_s + timeout_s) + warmup * 0.5
            why = ""
            while client.poll() is None and not why:
                if time.monotonic() > deadline:
                    why = "the client did not finish in time"
                for name, proc in (("balancer", balancer), ("node", node)):
                    if proc.poll() is not None:
                        why = f"the {name} exited {proc.returncode} before the client finished"
                time.sleep(0.02)
            if why or client.returncode != 0:
                why = why or f"the client exited {client.returncode}"
                logs = "".join(f"--- {n}.log\n{_tail(os.path.join(work, n + '.log'))}\n" for n in ROLES)
                raise RuntimeError(f"{why}:\n{logs}")
            with open(out) as fh:
                client_runs = json.load(fh)["runs"]
            roles = {balancer.pid: "balancer", node.pid: "node"}
            # A window is written once its tail ends (the process waits again): give them a moment.
            deadline = time.monotonic() + timeout_s
            while True:
                server = _read_windows(trace_dir, roles)
                complete = all(
                    sum(1 for w in server.get(role, []) if w["run"] == r) >= want
                    for role, want in (("balancer", 2), ("node", 1))
                    for r in range(runs)
                )
                if complete or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        finally:
            stop(procs, ep["frontend"])
    out_runs = []
    for r in range(runs):
        per_role = {"client": [w for w in client_runs if w["run"] == r]}
        for role in ("balancer", "node"):
            per_role[role] = [w for w in server.get(role, []) if w["run"] == r]
        out_runs.append(per_role)
    return out_runs


def _read_windows(trace_dir: str, roles: dict[int, str]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for path in glob.glob(os.path.join(trace_dir, "*.jsonl")):
        role = roles.get(int(os.path.basename(path).split(".")[0]), "other")
        with open(path) as fh:
            lines = fh.read().splitlines()
        for line in lines:
            try:
                found.setdefault(role, []).append(json.loads(line))
            except ValueError:
                pass  # a line being written
    return found


# ---- reporting ----------------------------------------------------------------------------


def summarize(counted: list[dict[str, Any]]) -> dict[str, Any]:
    """Min and median of each figure over the runs, in total and per process."""

    def stats(values: list[int]) -> dict[str, float]:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    keys = ("files", "moves", "call_and_return", "moves_to_send")
    out = {"total": {k: stats([c["total"][k] for c in counted]) for k in keys}}
    for role in ROLES:
        out[role] = {k: stats([c["processes"][role][k] for c in counted]) for k in keys}
    walks = {json.dumps([[w["walk"] for w in c["processes"][r]["windows"]] for r in ROLES]) for c in counted}
    out["distinct_walks"] = len(walks)
    return out


def compact(walk: list[dict[str, Any]], indent: str = "    ") -> list[str]:
    """The walk, a line per stay in a file with the functions it ran there; the caller's line carries
    its leaf visits (⇄ file:functions), and the return from one continues that line (with the
    caller's functions not named on it yet)."""
    lines: list[str] = []
    named: set[str] = set()
    prev_leaf = False
    for run in walk:
        name = run["file"] or "(caller)"
        if run.get("leaf") and lines:
            lines[-1] += f"  ⇄ {name}:{' '.join(run['funcs'])}"
            prev_leaf = True
            continue
        if prev_leaf and run["by"] == "r":
            prev_leaf = False
            new = [f for f in run["funcs"] if f not in named]
            named.update(new)
            if new:
                lines[-1] += "  " + " ".join(new)
            continue  # back in the caller's file after a leaf visit: the same line
        prev_leaf = False
        arrow = {"s": " ", "c": "→", "r": "←"}[run["by"]]
        named = set(run["funcs"])
        lines.append(f"{indent}{arrow} {name}{': ' if run['funcs'] else ''}{' '.join(run['funcs'])}")
    return lines


def print_report(result: dict[str, Any], show_walk: bool, show_tails: bool = False) -> None:
    counted = result["runs"]
    print(f"zlb walk of {result['code']} ({result['commit'] or 'no git'}), {len(counted)} traced request(s)")
    for i, c in enumerate(counted):
        t = c["total"]
        per = ", ".join(
            f"{r} {c['processes'][r]['files']} files/{c['processes'][r]['moves']} moves/"
            f"{c['processes'][r]['call_and_return']} c&r"
            for r in ROLES
        )
        print(f"  run {i}: {t['files']} files, {t['moves']} moves, {t['call_and_return']} call-and-return  ({per})")
        for role in ROLES:
            if timers := c["processes"][role]["timer_calls_in_window"]:
                print(f"    timer-like calls inside the {role}'s window: {', '.join(timers)}")
    s = result["summary"]
    print("summary (min / median / max over the runs):")
    for who in ("total", *ROLES):
        row = "  ".join(f"{k} {s[who][k]['min']}/{s[who][k]['median']:g}/{s[who][k]['max']}" for k in s[who])
        print(f"  {who:<9} {row}")
    if s["distinct_walks"] > 1:
        print(f"  note: the runs took {s['distinct_walks']} different walks")
    first = counted[0]
    if not show_walk:
        return
    print("the walk of run 0 (→ a call into, ← a return into, ⇄ a call-and-return; per window):")
    for role in ROLES:
        proc = first["processes"][role]
        print(f"  {role}: {proc['files']} files, {proc['moves']} moves, {proc['call_and_return']} call-and-return")
        for k, w in enumerate(proc["windows"]):
            print(f"   window {k + 1}: {w['moves']} moves ({w['moves_to_send']} up to the send), {w['call_and_return']}"
                  f" c&r, {w['events']} events; its tail, not counted: {w['tail_moves']} moves")  # fmt: skip
            print("\n".join(compact(w["walk"])))
            if show_tails and w["tail_walk"]:
                print(f"   tail of window {k + 1} (after the step that sent it on, until the process waits again):")
                print("\n".join(compact(w["tail_walk"])))
        print(f"   files: {', '.join(proc['file_list'])}")


def _commit(code: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", code, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", code, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + (" +changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.walk", description=__doc__.splitlines()[0])
    parser.add_argument("--code", default=ROOT, help="the checkout to trace (default: this one)")
    parser.add_argument("--runs", type=int, default=1, help="requests traced, each counted (default 1)")
    parser.add_argument("--warmup", type=int, default=20, help="untraced requests first (default 20)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-walk", action="store_true", help="figures only, not the walk itself")
    parser.add_argument("--tails", action="store_true", help="also show what each window's tail ran")
    parser.add_argument("--heartbeat-ms", type=int, default=60_000, help="balancer and node (default 60000)")
    parser.add_argument("--gap-s", type=float, default=0.1, help="pause before each traced request")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="bound on each wait")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 1:
        parser.error("--runs and --warmup must be at least 1")
    if not os.path.isdir(os.path.join(args.code, "balancer")):
        parser.error(f"--code {args.code!r} is not a zlb checkout")
    # A SIGTERM to this tool still stops what it started (trace's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        traced = trace(args.code, args.runs, args.warmup, args.heartbeat_ms, args.gap_s, args.timeout_s)
    except RuntimeError as exc:
        print(f"tools.walk: {exc}", file=sys.stderr)
        return 1
    counted = [count_run(per_role) for per_role in traced]
    missing = [(i, r) for i, c in enumerate(counted) for r in ROLES if not c["processes"][r]["windows"]]
    result = {
        "code": os.path.realpath(args.code),
        "commit": _commit(args.code),
        "method": " ".join(__doc__.split("\n\n")[2].split()),
        "runs": counted,
        "summary": summarize(counted),
        "missing_windows": missing,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result, not args.no_walk, args.tails)
    if missing:
        print(f"tools.walk: no window traced for (run, process) {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
