"""Reading a real ``/metrics`` endpoint in tests, with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from stocksync.metrics import Spec


class Scrape:
    """One scrape of an endpoint: families by their exposed base name."""

    def __init__(self, url: str) -> None:
        with urllib.request.urlopen(url, timeout=10) as response:
            self.content_type = response.headers["Content-Type"]
            text = response.read().decode()
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def family(self, spec: Spec) -> Any:
        """The family of ``spec`` (a counter's family drops ``_total``)."""
        name = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
        return self.families.get(name)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample called ``name`` with exactly these labels, if exported."""
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def get(self, name: str, **labels: str) -> float:
        """Like :meth:`value`, but the sample must be there."""
        value = self.value(name, **labels)
        assert value is not None, f"{name}{labels} not exported"
        return value


def check_spec(scrape: Scrape, spec: Spec) -> None:
    """``spec``'s family is exported with its type and labels, with at least one child."""
    family = scrape.family(spec)
    assert family is not None, f"{spec.name} is not exported"
    assert family.type == spec.kind, f"{spec.name}: {family.type}, expected {spec.kind}"
    assert family.samples, f"{spec.name} has no children (they are created at 0)"
    for sample in family.samples:
        names = set(sample.labels) - {"le"}
        assert names == set(spec.labels), f"{sample.name}: labels {sorted(names)}"
