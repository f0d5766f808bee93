"""What the ingress and the workers share: settings, the routing table, stream keys, the event envelope."""
