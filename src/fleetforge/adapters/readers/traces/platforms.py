"""The `Platform` seam (encode a batch of spans into one request) and the platforms' encoders by name.

Each platform lives in its own module (langsmith, langfuse, phoenix) with its `SPEC`; `registry`
lists them. This module keeps the names other code imports.
"""

from fleetforge.adapters.readers.traces.langfuse import LangfusePlatform, langfuse_attributes
from fleetforge.adapters.readers.traces.otlp_encoding import SERVICE_NAME
from fleetforge.adapters.readers.traces.phoenix import PhoenixPlatform, phoenix_attributes
from fleetforge.adapters.readers.traces.platform_spec import Platform

__all__ = ["SERVICE_NAME", "LangfusePlatform", "PhoenixPlatform", "Platform", "langfuse_attributes",
           "phoenix_attributes"]
