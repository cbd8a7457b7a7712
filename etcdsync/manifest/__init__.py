"""Manifest loading: YAML files -> validated, overlaid DesiredState (see DESIGN.md section 2).

Importing this package is cheap (PyYAML only); jsonschema is imported on first validation.
"""

from __future__ import annotations

from .loader import collect_files, load_manifests
from .schema import MANIFEST_SCHEMA

__all__ = ["MANIFEST_SCHEMA", "collect_files", "load_manifests"]
