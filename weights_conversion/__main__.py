"""`python -m weights_conversion ARCH [--checkpoint PATH] [--output PATH] [--force]`."""

from weights_conversion.cli import main

raise SystemExit(main())
