"""The `Platform` seam (encode a batch of spans into one request) and the platforms' encoders by name.

Each platform lives in its own module (langsmith, langfuse, phoenix) with its `SPEC`; `registry`
lists them. This module keeps the names other code imports.
"""

from fleetforge.adapters.exporters.langfuse import LangfusePlatform, langfuse_attributes
from fleetforge.adapters.exporters.otlp import SERVICE_NAME
from fleetforge.adapters.exporters.phoenix import PhoenixPlatform, phoenix_attributes
from fleetforge.adapters.exporters.spec import Platform

__all__ = ["SERVICE_NAME", "LangfusePlatform", "PhoenixPlatform", "Platform", "langfuse_attributes",
           "phoenix_attributes"]
