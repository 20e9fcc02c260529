"""Install tabor-tf. Metadata lives in setup.cfg; this file only picks the TensorFlow wheel.

CPU machines get ``tensorflow-cpu`` (no CUDA wheels). A GPU host installs with the ``gpu`` extra
(``pip install ".[gpu]"``), or keeps an already installed ``tensorflow`` wheel: when one is
present, or ``TABOR_TF_TENSORFLOW=gpu`` is set, we require ``tensorflow`` instead of
``tensorflow-cpu`` so the two wheels never sit side by side.
"""

import os
from importlib import metadata

from setuptools import setup

TF_VERSION = "2.21.*"


def _tensorflow_requirement() -> str:
    if os.environ.get("TABOR_TF_TENSORFLOW", "").lower() == "gpu":
        return f"tensorflow[and-cuda]=={TF_VERSION}"
    try:
        metadata.version("tensorflow")
        return f"tensorflow=={TF_VERSION}"
    except metadata.PackageNotFoundError:
        return f"tensorflow-cpu=={TF_VERSION}"


setup(install_requires=[
    _tensorflow_requirement(),
    "keras>=3.10,<4",
    "numpy>=1.26",
    "h5py>=3.10",
    "scipy>=1.11",
    "opencv-python-headless>=4.9",
])
