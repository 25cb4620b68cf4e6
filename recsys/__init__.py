"""recsys-zoo: CTR and sequential-recommendation models on one shared embedding layer."""

__version__ = "0.1.0"
