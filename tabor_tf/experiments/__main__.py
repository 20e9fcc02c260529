"""``python -m tabor_tf.experiments NAME ...``: the same as ``tabor-tf experiment NAME ...``."""

import sys

from ..commands.experiment import main

if __name__ == "__main__":
    sys.exit(main())
