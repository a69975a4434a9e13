from __future__ import annotations

from tangentlab.splits import draw, split_labelled


def test_draw_is_reproducible_and_order_free():
    ids = list(range(100))
    assert draw(ids, 10, seed=1, salt=2) == draw(list(reversed(ids)), 10, seed=1, salt=2)
    assert draw(ids, 10, seed=1, salt=2) != draw(ids, 10, seed=2, salt=2)
    assert len(draw(ids[:5], 10, seed=0, salt=0)) == 5


def test_split_keeps_training_data():
    splits = split_labelled(["0000aaaa", "0000bbbb"], valid_fraction=0.99)
    assert splits == ["train", "valid"]
    assert split_labelled(["ffffffff"] * 3, valid_fraction=0.0) == ["train"] * 3
    assert split_labelled(["ffffffff"] * 3, valid_fraction=0.1) == ["train", "train", "valid"]
    assert split_labelled(["ffffffff"], valid_fraction=0.1) == ["train"]
