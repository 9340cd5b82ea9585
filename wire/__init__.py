"""The bottom floor: what every zlb role shares.

The wire protocol and its bounds, the event vocabulary, curve security, the
control-socket client, the click options every command reads and the one
percentile definition behind every latency figure. Nothing here
imports a role's package (balancer, server_node, client_node, monitor) or
anything above.
"""
