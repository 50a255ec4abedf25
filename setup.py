"""Package discovery for the three source folders mapped under one `branchrl` namespace (pyproject.toml holds
everything else). `[tool.setuptools.packages.find]` cannot map several folders into one package tree, so the
packages are found here: every folder with an __init__.py under rl/, verifiers/ and envs/."""

from setuptools import find_packages, setup

ROOTS = {"branchrl": "rl", "branchrl.verifiers": "verifiers", "branchrl.envs": "envs"}

setup(
    package_dir=ROOTS,
    packages=[f"{name}.{sub}" if sub else name for name, folder in ROOTS.items()
              for sub in ["", *find_packages(folder)]],
)
