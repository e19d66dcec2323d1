"""One policy for many hosts through etcd: `netctl agent` on every node, `netctl push` and
`netctl fleet status` for the operator (docs/fleet.md).

=========  ===================================================================================
keys       the key space under /netctl/v1/, digests, node names, labels and selectors (pure)
backoff    exponential backoff with jitter for reconnects (pure)
status     the node status record, its rate limit, and the fleet's convergence (pure)
store      the etcd client: connection options, TLS and users, errors as FleetError
agent      `netctl agent`: register, watch, apply, report
push       `netctl push`: store a policy and roll it out, canaries first
=========  ===================================================================================
"""
