"""zlb: a priority load balancer over ZeroMQ."""

__version__ = "0.1.0"
