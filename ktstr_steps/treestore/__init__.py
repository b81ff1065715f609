"""The host's tree store: per-branch trees, the shared git objects, seeding and pruning.

``mirror`` (the bare object store per repository), ``inventory`` (what the
store holds, stamps, locked state, sizes), ``seed`` (a new tree from the
nearest built one), ``prune`` (limits, least recently built first) and
``prepare`` (what the checkout step runs before git).
"""
