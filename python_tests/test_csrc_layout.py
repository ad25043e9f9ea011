"""The C++ layout the build relies on (issue 17.2): every op family declares its schema in
csrc/<family>/<family>_schema.cpp, CMake finds the families by that file, and the shared
device/dtype checks live once, in csrc/common/checks.h.

These read the source tree next to the tests, so they skip when the tests run without it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import manifold_ext  # noqa: F401  (loads the extension, registering every op)

CSRC = Path(__file__).resolve().parent.parent / "csrc"
pytestmark = pytest.mark.skipif(not CSRC.is_dir(), reason="needs the source tree (csrc/)")

# The checks of csrc/common/checks.h; a family defining one of these names again is a copy.
SHARED_CHECKS = ("check_cpu", "check_cpu_device", "check_cuda", "check_floating", "check_same_device", "check_like")


def schema_files() -> list[Path]:
    return sorted(CSRC.glob("*/*_schema.cpp"))


def declared_ops(schema: Path) -> list[str]:
    return re.findall(r'm\.def\(\s*"(\w+)\(', schema.read_text())


def test_every_family_folder_declares_its_schema_in_its_own_file():
    families = sorted(p.name for p in CSRC.iterdir() if p.is_dir() and p.name != "common")
    with_schema = sorted(p.parent.name for p in schema_files() if p.name == f"{p.parent.name}_schema.cpp")
    assert with_schema == families, (
        f"families without csrc/<family>/<family>_schema.cpp: {sorted(set(families) - set(with_schema))}"
    )


def test_ops_cpp_declares_no_op():
    # ops.cpp defines the library namespace only; a schema there would not move with its family.
    assert declared_ops(CSRC / "ops.cpp") == []


def test_every_declared_op_is_registered_in_the_build():
    declared = {name for schema in schema_files() for name in declared_ops(schema)}
    assert declared, "no m.def(...) found in csrc/*/*_schema.cpp"
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("manifold_ext::")}
    assert sorted(declared - registered) == [], "declared in a schema file but not built (CMake family discovery)"


def test_every_registered_op_is_declared_in_a_family_schema():
    declared = {name for schema in schema_files() for name in declared_ops(schema)}
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("manifold_ext::")}
    assert sorted(registered - declared) == []


@pytest.mark.parametrize("check", SHARED_CHECKS)
def test_shared_checks_are_defined_once_in_common(check):
    definition = re.compile(rf"^\s*(?:inline\s+|static\s+)?void\s+{check}\s*\(", re.MULTILINE)
    sources = [p for p in sorted(CSRC.rglob("*")) if p.suffix in {".h", ".cpp", ".cu", ".cuh"}]
    defined_in = [str(p.relative_to(CSRC)) for p in sources if definition.search(p.read_text())]
    assert defined_in == ["common/checks.h"]


def test_cpu_and_cuda_register_one_op_list_per_family():
    """A family with CUDA kernels registers its CPU and its CUDA kernels from the one list of its ops in its host
    header (common/registration.h), so the two devices cannot drift apart op by op."""
    families = sorted(p.parent.name for p in CSRC.glob("*/*_cuda.cu"))
    assert families, "no CUDA sources found"
    for family in families:
        macro = f"MANIFOLD_EXT_{family.upper()}_OPS"
        assert re.search(rf"#define {macro}\(X\)", (CSRC / family / f"{family}_host.h").read_text()), family
        for source, key in ((f"{family}_cpu.cpp", "CPU"), (f"{family}_cuda.cu", "CUDA")):
            text = (CSRC / family / source).read_text()
            blocks = re.findall(rf"TORCH_LIBRARY_IMPL\(manifold_ext, {key}, m\) \{{([^}}]*)\}}", text)
            assert blocks == [f" {macro}(MANIFOLD_EXT_IMPL_{key}) "], f"{source}: {blocks}"
