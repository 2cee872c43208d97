"""The optional C extension (proxy/detectors/_native.c); everything else is in pyproject.toml.

``optional=True``: where no C compiler is found the install goes on without it, and the content
detectors run their numpy code, which computes the same values.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "proxy.detectors._native",
            ["proxy/detectors/_native.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
