"""Which trees a model may be served from: the bound-root rule and the pin and trust flags,
as tables of cases (pure functions)."""

from __future__ import annotations

import pytest

from sealserve.errors import InvalidArgument
from sealserve.model_tree import bound_root_matches
from sealserve.serving.model_config import ModelPin, ModelTrust, parse_model_pin


@pytest.mark.parametrize(
    ("bound_root", "served_as", "matches"),
    [
        ("/models/m/1", "/models/m/1", True),
        ("/models/m/1", "/models/m/1/", True),
        ("/models/m/1", "/models//m/./1", True),
        ("/models/m/1", "/models/m/9", False),  # a copy under another version
        ("/models/m/1", "/models/other/1", False),  # a copy under another model
        ("/models/m/1", "/srv/models/m/1", False),  # absolute: exactly
        ("models/m/1", "/srv/models/m/1", True),  # relative: the last components
        ("models/m/1", "/srv/models/m/9", False),
        ("models/m/1", "/srv/xmodels/m/1", False),  # whole components only
        ("../models/m/1", "/srv/models/m/1", False),  # never above the served path
        ("", "/srv/models/m/1", False),
        ("/", "/", False),
    ],
)
def test_bound_root_matches(bound_root, served_as, matches):
    assert bound_root_matches(bound_root, served_as) is matches


@pytest.mark.parametrize(
    ("flag", "name", "pin"),
    [
        ("m=abc", "m", ModelPin("abc", 0)),
        ("m=abc:3", "m", ModelPin("abc", 3)),
        ("m=*:3", "m", ModelPin(None, 3)),
    ],
)
def test_model_pin_flags(flag, name, pin):
    assert parse_model_pin(flag) == (name, pin)


@pytest.mark.parametrize("flag", ["m", "=abc", "m=", "m=abc:x", "m=abc:-1"])
def test_bad_model_pin_flags(flag):
    with pytest.raises(InvalidArgument):
        parse_model_pin(flag)


def test_pins_merge_to_the_stricter_and_conflicting_ids_are_refused():
    assert ModelPin("a", 2).merged(ModelPin(None, 5)) == ModelPin("a", 5)
    assert ModelPin(None, 7).merged(ModelPin("b", 1)) == ModelPin("b", 7)
    with pytest.raises(InvalidArgument, match="conflicting model id pins"):
        ModelPin("a").merged(ModelPin("b"))


@pytest.mark.parametrize(
    ("trust", "name", "keyed"),
    [
        (ModelTrust(keyed_models=frozenset({"m"})), "m", True),
        (ModelTrust(keyed_models=frozenset({"m"})), "other", False),
        (ModelTrust(every_model_keyed=True), "anything", True),
        (ModelTrust(every_model_keyed=True, plain_models=frozenset({"p"})), "p", False),
    ],
)
def test_which_models_are_keyed(trust, name, keyed):
    assert trust.keyed(name) is keyed
