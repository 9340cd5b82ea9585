"""The zlb balancer: protocol, scheduler and the socket loop around them."""
