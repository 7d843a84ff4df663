"""``python -m tooz``: the ``tooz`` command line (see ``tooz.cli``)."""

import sys

from tooz.cli import main

sys.exit(main())
