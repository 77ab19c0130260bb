"""The `Example:` blocks in the shipped modules' docstrings run as written (doctest)."""

import doctest

import pytest

import modeling_vlap.assignment_prediction
import modeling_vlap.modeling_vlap
import modeling_vlap.optimal_transport


@pytest.mark.parametrize(
    "module", [modeling_vlap.assignment_prediction, modeling_vlap.modeling_vlap, modeling_vlap.optimal_transport]
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0, f"{module.__name__} has no Example: to run"
