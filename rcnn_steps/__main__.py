"""``python -m rcnn_steps <command>``: see :mod:`rcnn_steps.cli`."""

import sys

from rcnn_steps.cli import main

if __name__ == "__main__":
    sys.exit(main())
