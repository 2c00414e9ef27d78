"""``python -m rcnn_steps.cli <command>``, the same as ``python -m rcnn_steps <command>``
(:func:`rcnn_steps.cli.main`): the form ``cli.py`` answered before it became a package."""

import sys

from rcnn_steps.cli import main

if __name__ == "__main__":
    sys.exit(main())
