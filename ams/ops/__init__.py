"""Running AMS without containers: the local stack (`make up`, `make demo`), the scale-out cluster behind
HAProxy and its configuration, and the operator's Docker smoke test."""
