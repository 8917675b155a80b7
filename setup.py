"""Ships the checkout's top-level conf/ and sweeps/ (the lightning-hydra-template layout) inside the package,
as bnrepro/conf and bnrepro/sweeps, so an installed bnrepro composes its configs from any directory.
Everything else about the package is in pyproject.toml."""

from setuptools import find_namespace_packages, find_packages, setup

SHIPPED = {"bnrepro.conf": "conf", "bnrepro.sweeps": "sweeps"}  # package -> folder of YAML files

packages = find_packages("src") + [
    f"{package}.{sub}" if sub else package
    for package, folder in SHIPPED.items()
    for sub in ["", *find_namespace_packages(folder)]
]
setup(
    packages=packages,
    package_dir={"": "src", **SHIPPED},
    package_data={"": ["*.yaml"]},
)
