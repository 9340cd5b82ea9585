"""Starting and stopping zlb processes on this machine, by PID.

A bottom-floor package beside wire/: `zlb cluster`, the HTTP gateway's
/configure and `zlb bench` all start child processes with it, so it sits below
every one of them and imports only wire and the standard library.
"""
