"""Packaging for socp-tw.

Flat layout: ``twisted.plugins`` is listed explicitly (``find_packages`` cannot see a
namespace package without ``__init__.py``, and it must have none).
"""

from setuptools import find_packages, setup

setup(
    name="socp-tw",
    version="0.1.0",
    description="Secure Overlay Chat Protocol v1.3 server and client on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[*find_packages(include=["socp_tw", "socp_tw.*"]), "twisted.plugins"],
    package_data={"socp_tw": ["schema/*.sql", "test/vectors/*.json"]},
    include_package_data=True,
    install_requires=[
        "twisted[tls] >= 24.3, < 27",
        "autobahn[twisted] >= 24.4, < 27",
        "cryptography >= 42, < 51",
        "pyopenssl >= 24.3, < 27",
        "service-identity >= 24.1, < 27",
        "zope.interface >= 6.0, < 9",
        # --bootstrap files are YAML (or JSON, which YAML also reads).
        "pyyaml >= 6.0, < 7",
        # --metrics: the Prometheus text format, its naming rules and the process collector.
        "prometheus_client >= 0.17, < 1",
    ],
    extras_require={
        "test": [
            "ruff >= 0.6, < 1",
            "hypothesis >= 6.100, < 7",
        ],
    },
    entry_points={
        "console_scripts": [
            "socp-client = socp_tw.client:main",
            "socpctl = socp_tw.admin.ctl:main",
        ],
    },
    zip_safe=False,
)
