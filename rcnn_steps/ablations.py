"""Moved to :mod:`rcnn_steps.experiments.ablations` (the papers' ablation tables run as
grids; the tables themselves are data in :mod:`rcnn_steps.experiments.paper_tables`).

This shim keeps the old import path working, and ``python -m rcnn_steps.ablations grid
...``, the command the ablation results files record.
"""

import sys

from rcnn_steps.experiments.ablations import *  # noqa: F403 (the old path's public names)
from rcnn_steps.experiments.ablations import (
    __all__,  # noqa: F401
    main,
)

if __name__ == "__main__":
    sys.exit(main())
