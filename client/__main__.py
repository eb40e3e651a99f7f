"""``python -m client``: the ``chinwag`` command-line client."""

from client.cli import main

raise SystemExit(main())
