"""manifold_ext: fused C++/CUDA PyTorch operators for probabilistic and
geometric descriptions of image manifolds, and the models built on them.

Importing the package loads the compiled operators into the dispatcher as
``torch.ops.manifold_ext.*``; ``manifold_ext.ops`` holds their Python wrappers.
"""

# The one place the version is written: the build reads it from here
# (pyproject.toml, [tool.scikit-build.metadata.version]).
__version__ = "0.1.0"

from manifold_ext._extension import build_info, load_extension  # noqa: E402

load_extension()

from manifold_ext import ops  # noqa: E402  (needs the operators registered)

__all__ = ["ops", "build_info", "__version__"]
