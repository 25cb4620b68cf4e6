"""FinalMLP's feature-selection contexts default to the fields the schema marks with a role, whatever their
names; without a role or a field of the role's name, the error names the model setting."""

from __future__ import annotations

import pytest
import torch

from recsys.batch import Batch
from recsys.config import ConfigError, build_model
from recsys.features import FieldSpec, Schema


def _schema(roles: dict[str, str]) -> Schema:
    return Schema([FieldSpec(name, "categorical", vocab_size=12, role=roles.get(name)) for name in ("visitor", "listing", "hour")])


def test_contexts_default_to_the_fields_marked_user_and_item() -> None:
    model = build_model({"_target_": "recsys.models.finalmlp.FinalMLP", "num_heads": 1}, _schema({"visitor": "user", "listing": "item"}))
    assert model.gate1.context.field_names == ["visitor"] and model.gate2.context.field_names == ["listing"]
    batch = Batch(torch.randint(0, 12, (4, 3)), torch.zeros(4, 0), torch.zeros(4, 0, 0, dtype=torch.long))
    assert model(batch).shape == (4,)


def test_a_setting_given_wins_and_an_empty_one_is_a_learned_context() -> None:
    model = build_model({"_target_": "recsys.models.finalmlp.FinalMLP", "num_heads": 1, "fs1_context": ["hour"], "fs2_context": []},
                        _schema({"visitor": "user", "listing": "item"}))
    assert model.gate1.context.field_names == ["hour"] and model.gate2.context is None


@pytest.mark.parametrize(("params", "expected"), [
    ({}, "model.fs1_context defaults to the field with role: user"),
    ({"fs1_context": ["visitor"]}, "model.fs2_context defaults to the field with role: item"),
    ({"fs1_context": ["user"]}, "model.fs1_context names unknown field(s) ['user']"),
])
def test_without_a_role_or_a_field_the_error_names_the_setting(params, expected) -> None:
    with pytest.raises(ConfigError) as err:
        build_model({"_target_": "recsys.models.finalmlp.FinalMLP", "num_heads": 1, **params}, _schema({}))
    assert expected in str(err.value) and "recsys.models.finalmlp.FinalMLP" in str(err.value)


def test_a_role_is_checked() -> None:
    from recsys.features import FeatureError

    with pytest.raises(FeatureError, match="unknown role 'seller'"):
        FieldSpec("x", "categorical", role="seller")
    with pytest.raises(FeatureError, match="a role marks a categorical field"):
        FieldSpec("x", "numeric", role="user")
    with pytest.raises(FeatureError, match="all have role 'user'"):
        Schema([FieldSpec("a", "categorical", role="user"), FieldSpec("b", "categorical", role="user")])
