"""Every op documents its contract, and its reference shares its signature by construction."""

from __future__ import annotations

import inspect

import pytest

from manifold_ext.reference._spec import reference_of
from op_contract.cases import CASES, ids

SECTIONS = ("Shapes:", "Dtypes and devices:", "Numerics:", "Raises:")


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_op_docstring_states_shapes_dtypes_numerics_and_errors(case):
    doc = inspect.getdoc(case.op)
    for section in SECTIONS:
        assert f"\n{section}\n" in f"\n{doc}\n", f"{case.name}: docstring has no '{section}' section"
    assert "NaN" in doc, f"{case.name}: the NaN rule is not stated"
    if case.differentiable:
        assert "second" in doc or "any order" in doc, f"{case.name}: double-backward behaviour not stated"


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_reference_has_the_op_signature(case):
    assert inspect.signature(case.reference) == inspect.signature(case.op)
    assert case.reference.reference_of is case.op
    assert f"manifold_ext.ops.{case.name}" in case.reference.__doc__


def test_reference_of_refuses_drift():
    def op(x, y, *, scale=1.0):
        return x

    with pytest.raises(TypeError, match="must take the parameters of op"):

        @reference_of(op)
        def renamed(x, z, *, scale):
            return x

    with pytest.raises(TypeError, match="leave out the defaults"):

        @reference_of(op)
        def restates(x, y, *, scale=2.0):
            return x

    @reference_of(op)
    def reference(x, y, *, scale):
        return scale

    assert reference(1, 2) == 1.0  # the op's default
