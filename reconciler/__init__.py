"""reconciler: keep a pool of workers alive, healthy and productive.

Operators describe the pool in ``workers.yaml``; ``reconcile diff`` shows what
would change and ``reconcile apply`` converges tmux windows or processes, the
embedded task queue and git worktrees to that description.
"""

__version__ = "0.1.0"
