"""``python -m probe_dask``: the ``probe-dask`` command."""

import sys

from probe_dask.app.cli import main

sys.exit(main())
