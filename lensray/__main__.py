"""`python -m lensray ...` is the same as the `lensray` console script."""

from lensray.cli import main

raise SystemExit(main())
