"""The pretraining recipes: one flow, a registry of recipes, a clear error for an unknown one."""

from __future__ import annotations

import pytest

from flows.pretrain import RECIPES, pretrain


def test_each_recipe_names_its_model_and_describes_its_data():
    assert {"molecules": "tangentlab-hcno-xtb", "surface": "tangentlab-cuoh-emt"} == {
        key: recipe.name for key, recipe in RECIPES.items()
    }
    for recipe in RECIPES.values():
        record = recipe.describe(10, 7, 2)
        assert (record["n_structures"], record["seed"], record["dropped"]) == (10, 7, 2)


def test_an_unknown_recipe_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown pretraining recipe 'crystals'.*molecules"):
        pretrain.fn(recipe="crystals")


def test_the_surface_recipe_labels_slab_frames_with_emt():
    recipe = RECIPES["surface"]
    structures = recipe.generate(3, 0)
    labelled, dropped = recipe.label.fn(structures, "unused")
    assert len(labelled) + dropped == len(structures) > 0
    for atoms in labelled:
        assert atoms.pbc.any() and atoms.constraints
        assert atoms.arrays["REF_forces"].shape == (len(atoms), 3)
