"""Sluice as a Pulumi plugin package: ThrottledFanOut for TypeScript, Go, YAML and other programs."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pulumi.provider
from pulumi.provider.experimental.analyzer import PropertyType
from pulumi.provider.experimental.component import ComponentProvider

from sluice_fanout.components.throttled_fan_out import ThrottledFanOut

if TYPE_CHECKING:
    from pulumi import Inputs
    from pulumi.provider.experimental.analyzer import PropertyDefinition

PACKAGE_NAME = "sluice"
"""The Pulumi package name: the first part of every token and the name consumers add.

Resource tokens are `<PACKAGE_NAME>:index:<class name>` (`sluice:index:ThrottledFanOut`), the same
token the component registers itself with."""
PACKAGE_VERSION = "0.1.0"
"""Schema version; kept equal to pyproject.toml's project version."""
COMPONENTS: list[type[pulumi.ComponentResource]] = [ThrottledFanOut]
"""Components offered to other languages. Only the top one: the sub-components take Outputs of
each other and are wired by ThrottledFanOut, not by users."""


class SluiceProvider(ComponentProvider):
    """The SDK's component provider, with whole numbers delivered as `int`.

    Numbers cross the wire as floats. pulumi 3.272's ComponentProvider converts an integer
    property with int() and then overwrites the result with the raw float (component.py,
    map_input_properties), so `concurrency: 4` would reach ThrottledFanOut as 4.0, which its
    validation refuses ("must be a whole number") instead of truncating. This restores the
    conversion for integer properties whose value is a whole float, at every nesting level; any
    other value is left for the component's validation to report.
    """

    def map_input_properties(
        self,
        inputs: Inputs,
        properties: dict[str, PropertyDefinition],
        mapping: dict[str, str],
        component_name: str,
        property_path: str,
    ) -> Inputs:
        mapped = dict(
            super().map_input_properties(inputs, properties, mapping, component_name, property_path)
        )
        for schema_name, prop in properties.items():
            py_name = mapping[schema_name]
            value = mapped.get(py_name)
            if prop.type is PropertyType.INTEGER and isinstance(value, float) and value.is_integer():
                mapped[py_name] = int(value)
        return mapped


def provider() -> SluiceProvider:
    """The provider the plugin serves: analyzing COMPONENTS here is what builds the schema.

    Pulumi's Python component host infers the package schema from ThrottledFanOut's annotations
    and docstrings (the args TypedDict for inputs, the `pulumi.Output[...]` attributes for
    outputs), generates an SDK in the consumer's language, and constructs the component here when
    their program runs.
    """
    return SluiceProvider(COMPONENTS, PACKAGE_NAME, version=PACKAGE_VERSION)


def serve(args: list[str] | None = None) -> None:
    """Start the gRPC provider server the Pulumi engine talks to (blocks until it stops).

    `pulumi package add <repo>/provider` runs provider/__main__.py, which calls this.
    What `component_provider_host(name="sluice", components=COMPONENTS)` does, with
    SluiceProvider in place of the SDK's ComponentProvider.
    """
    pulumi.provider.main(provider(), sys.argv[1:] if args is None else args)
