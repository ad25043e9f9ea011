"""The optional-dependency and Dask-address helpers give clear errors."""

import pytest

from manifold_ext._distributed import dask_client
from manifold_ext._optional import MissingOptionalDependency, require


def test_require_imports_an_installed_module():
    assert require("numpy.linalg").__name__ == "numpy.linalg"


def test_require_names_the_extra_when_missing():
    with pytest.raises(MissingOptionalDependency, match=r"pip install 'manifold_ext\[all\]'"):
        require("surely_not_an_installed_module_xyz", feature="testing")


def test_dask_client_rejects_an_empty_address():
    with pytest.raises(ValueError, match="Dask scheduler address"):
        dask_client("  ")
