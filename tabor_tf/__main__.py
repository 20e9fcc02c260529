"""``python -m tabor_tf`` is the ``tabor-tf`` console script."""

from .cli import main

raise SystemExit(main())
