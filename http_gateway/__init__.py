"""`zlb http`: the seed's REST API and Prometheus /metrics over a real balancer."""
