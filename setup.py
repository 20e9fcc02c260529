"""Install tabor-tf. All metadata, requirements included, lives in setup.cfg and is static: a
wheel's requirements never depend on the machine that built it (see the TensorFlow note there)."""

from setuptools import setup

setup()
