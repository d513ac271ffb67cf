"""Registries: case-insensitive look-up and errors that list the valid names."""

from __future__ import annotations

import pytest

from relcomp.errors import RelcompError
from relcomp.registry import Registry, UnknownNameError


@pytest.fixture
def rules() -> Registry[str]:
    registry = Registry[str]("LRP rule")
    registry.register("Epsilon", "eps")("epsilon rule")
    registry.register("AttnLRP")("attention rule")
    registry.register("CP_LRP")("conservative propagation")
    return registry


def test_names_resolve_whatever_the_case_and_separator(rules):
    assert rules.get("Epsilon") == "epsilon rule"
    assert rules.get("  EPSILON ") == "epsilon rule"
    assert rules.get("eps") == "epsilon rule"
    assert rules.get("cp-lrp") == rules.get("CP_LRP") == "conservative propagation"
    assert "attnlrp" in rules
    assert "Gamma" not in rules
    assert 3 not in rules


def test_names_lists_the_canonical_spellings_without_aliases(rules):
    assert rules.names() == ["AttnLRP", "CP_LRP", "Epsilon"]
    assert list(rules) == rules.names()


def test_unknown_name_lists_valid_names_and_suggests_a_close_one(rules):
    with pytest.raises(UnknownNameError) as error:
        rules.get("epsilom")
    message = str(error.value)
    assert message == (
        "unknown LRP rule 'epsilom'; did you mean 'Epsilon'? Valid names: AttnLRP, CP_LRP, Epsilon"
    )


def test_unknown_name_without_a_close_match_still_lists_valid_names(rules):
    with pytest.raises(UnknownNameError) as error:
        rules.get("zennit")
    message = str(error.value)
    assert "did you mean" not in message
    assert message.endswith("Valid names: AttnLRP, CP_LRP, Epsilon")
    assert "'zennit'" in message


def test_unknown_name_error_is_a_key_error_and_a_relcomp_error(rules):
    with pytest.raises(KeyError):
        rules.get("gamma")
    with pytest.raises(RelcompError):
        rules.get("gamma")


def test_registering_a_name_twice_is_refused(rules):
    with pytest.raises(ValueError, match="registered twice"):
        rules.register("epsilon")("another")
    with pytest.raises(ValueError, match="registered twice"):
        rules.register("Gamma", "EPS")("alias clash")
