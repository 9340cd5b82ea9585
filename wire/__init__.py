"""The bottom floor: what every zlb role shares.

The wire protocol and its bounds, the event vocabulary, curve security, the
control-socket client and the click options every command reads. Nothing here
imports a role's package (balancer, server_node, client_node, monitor) or
anything above.
"""
