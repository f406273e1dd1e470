"""Allow ``python -m reconciler`` as an alias of the ``reconcile`` command."""

from reconciler.cli import main

raise SystemExit(main())
