"""ktstr-ci worker-host tooling: one buildbot-worker per LLC group, CPU-pinned."""
