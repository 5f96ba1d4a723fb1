"""Declares the C extensions (_statepages, _assign); all other metadata lives in pyproject.toml.

The extension sits here rather than in pyproject's ``[tool.setuptools] ext-modules`` so that it
merges with another extension declared there without touching the same lines: setuptools appends
pyproject's ext-modules to these.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # Pages of objects' own state, pagemap reads (gdsu_fork/cow.py); CPython 3.11-3.13 layouts.
        Extension(
            "gdsu_fork._statepages",
            sources=["gdsu_fork/_statepages.c"],
            extra_compile_args=["-Werror=implicit-function-declaration"],
        ),
        # The commit's assignments over groups of instances (gdsu_fork/bulk.py).
        Extension(
            "gdsu_fork._assign",
            sources=["gdsu_fork/_assign.c"],
            extra_compile_args=["-Werror=implicit-function-declaration"],
        ),
    ],
)
