"""The one error type the feature pipeline raises for bad input: it always names the field or column."""


class FeatureError(ValueError):
    """Bad input to the feature pipeline: a missing column, a wrong type, empty input, a bad label,
    or data that does not match the fitted schema."""
