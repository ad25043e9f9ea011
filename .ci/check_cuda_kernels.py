"""Every op a *_cuda.cu file registers has its CUDA kernel in the installed build.

Usage: python .ci/check_cuda_kernels.py REPO   (run outside the source tree, so the
installed manifold_ext is imported). The ops to expect are read from the sources:
each csrc/<family>/<family>_cuda.cu registers the ops of its family's list,
MANIFOLD_EXT_<FAMILY>_OPS(X) in <family>_host.h (common/registration.h), and any
m.impl("name", ...) line written out. A family that is CPU-only by design (no
_cuda.cu) is listed, not failed; a .cu file that was not compiled in, a kernel
that did not register, or finding no op to expect at all (the parsing no longer
matching the sources), fails.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

import manifold_ext


def family_op_list(host_header: Path, macro: str) -> list[str]:
    """The X(name) entries of `#define <macro>(X) ...` (a backslash-continued define)."""
    match = re.search(rf"#define {macro}\(X\)((?:[^\n]*\\\n)*[^\n]*)", host_header.read_text())
    return re.findall(r"X\((\w+)\)", match.group(1)) if match else []


def expected_cuda_ops(repo: Path) -> set[str]:
    names = set()
    for source in sorted(repo.glob("csrc/*/*_cuda.cu")):
        text = source.read_text()
        names.update(re.findall(r'm\.impl\("(\w+)"', text))
        for macro in re.findall(r"(MANIFOLD_EXT_\w+_OPS)\(MANIFOLD_EXT_IMPL_CUDA\)", text):
            family = source.parent
            listed = family_op_list(family / f"{family.name}_host.h", macro)
            if not listed:
                raise SystemExit(f"FAILED: {source.name} registers {macro}, but {family.name}_host.h lists no op in it")
            names.update(listed)
    return {f"manifold_ext::{name}" for name in names}


def main() -> int:
    repo = Path(sys.argv[1])
    info = manifold_ext.build_info()
    print("-- build:", info)
    if not info["cuda"]:
        print("FAILED: the extension was built without its CUDA kernels")
        return 1
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("manifold_ext::"))
    expected = expected_cuda_ops(repo)
    if not expected:
        print("FAILED: found no op registered by csrc/*/*_cuda.cu (has the registration's form changed?)")
        return 1
    missing = sorted(op for op in expected if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"))
    cpu_only = sorted(
        op for op in ops if op not in expected and not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
    )
    print(
        f"-- {len(ops)} manifold_ext ops; {len(expected) - len(missing)} of the {len(expected)} with a "
        f"CUDA kernel in csrc/ registered; CPU-only by design: {cpu_only or 'none'}"
    )
    if missing:
        print(f"FAILED: ops whose CUDA kernel did not register: {missing}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
