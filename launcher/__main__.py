"""``python -m launcher start|stop|status [--workers-only]`` (see :mod:`launcher.actions`)."""

import sys

from launcher.actions import main

sys.exit(main())
