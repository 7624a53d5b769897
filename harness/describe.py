"""Methods' self-descriptions (display label, write-compute axis) from a run's method spec, built
from the method's config alone (no backbone). The one-off migration that records them in old
summaries is `migrations/describe_summaries.py`."""
from __future__ import annotations

from harness import registry
from harness.schema import typed_section


def describe_spec(method_spec: dict) -> dict:
    """`Method.describe` for a method spec {"name": ..., **options} (unset options: defaults)."""
    cls = registry.get_method(method_spec["name"])
    return cls.describe(typed_section("method", method_spec))
