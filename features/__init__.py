"""Polars feature pipeline: readers, schema, vocabularies, stable hashing. Imported as `recsys.features`."""

from recsys.features.errors import FeatureError
from recsys.features.pipeline import FeaturePipeline
from recsys.features.readers import scan_libfm, scan_table
from recsys.features.schema import OOV_ID, PAD_ID, FieldSpec, Schema

__all__ = ["FeatureError", "FeaturePipeline", "FieldSpec", "OOV_ID", "PAD_ID", "Schema", "scan_libfm", "scan_table"]
