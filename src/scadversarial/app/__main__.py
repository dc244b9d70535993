"""``python -m scadversarial.app``: start the demo app (see :func:`scadversarial.app.launch`)."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
