"""``python -m rcnn_steps.keypoint_debug ...``: chapter 07's keypoint trace
(:mod:`rcnn_steps.experiments.keypoint_debug`), by the command that
``results/keypoint_debug.json`` records (its provenance reads ``keypoint_debug.py ...``,
shown as ``python -m rcnn_steps.keypoint_debug ...``: :func:`rcnn_steps.utils.
provenance_lines`). ``python -m rcnn_steps keypoint-debug ...`` is the same command.
"""

import sys

from rcnn_steps.experiments.keypoint_debug import main

if __name__ == "__main__":
    sys.exit(main())
