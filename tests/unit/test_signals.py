"""Every signal name that code reads by name (protocols.signals) is a name in the shipped catalog."""

from protocols import signals
from protocols.catalog import load_catalog


def test_every_named_signal_is_in_the_shipped_catalog() -> None:
    catalog_names = {spec.name for spec in load_catalog()}
    constants = {k: v for k, v in vars(signals).items() if k.isupper() and not k.startswith("_")}
    named = [v for v in constants.values() if isinstance(v, str)]
    named += list(signals.FAULT_FLAGS)
    assert len(named) > 15
    assert set(named) <= catalog_names, sorted(set(named) - catalog_names)
