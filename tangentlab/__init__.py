"""tangentlab: the science core (configuration, MACE adapter, acquisition, exploration,
fine-tuning)."""

from tangentlab import quiet  # noqa: F401  (mace before e3nn; hides library notices)
