"""Serving, imported as `recsys.serving`: ONNX export with a parity check (`export`), the raw-request
encoder and scoring backends (`backends`), the HTTP endpoint (`app`) and its load benchmark
(`loadbench`)."""
