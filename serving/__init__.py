"""Serving, imported as `recsys.serving`: ONNX export with a parity check (`export`), the raw-request
encoder and scoring backends (`backends`), and the HTTP endpoint (`app`). Its load benchmark is a
command: `recsys.bench.serve`."""
