"""The `recsys` command.

    recsys train [hydra overrides]        one run (or a sweep with -m), writes metrics.json
    recsys data inspect data=NAME         a dataset before training: rows, label rate, fields, warnings
    recsys bench zoo [--data ...]         the zoo's models on one dataset, and a leaderboard
    recsys bench throughput [...]         our training speed against DeepCTR-Torch and FuxiCTR, in turns
    recsys bench sequence [...]           SDIM / DIN-long / DARE speed over history lengths
    recsys bench accuracy [--suite ...]   a suite of experiments over seeds (mean ± sd) and its claims
    recsys report RUNS_DIR [...]          leaderboard (CSV, Markdown) and an HTML report of many runs
    recsys export run_dir=DIR out=DIR     ONNX export of a run, with a parity check against PyTorch
    recsys serve EXPORT_DIR [...]         the HTTP scoring endpoint (ONNX Runtime; --backend torch to compare)
    recsys bench serve --run NAME=DIR     load benchmark of the endpoint, ONNX against PyTorch eager
    recsys bench next-item --peer-python  our SASRec against RecBole's, same split, size and evaluation
    recsys bench retrieval [--serve]      exact vs approximate top-K over 1M items; /v1/recommend latency
    recsys bench streaming [...]          feature fit, transform and training loader at 10M-100M rows, flat memory

A user error (a bad config, bad data, a run that cannot be exported, a training loss that stops being
finite) prints one line, `recsys COMMAND: what went wrong`, and exits 1. `--debug` anywhere on the line,
or HYDRA_FULL_ERROR=1, shows the whole traceback instead; so does any other error (a bug).
"""

from __future__ import annotations

import os
import sys

USAGE = __doc__
COMMANDS = ("train", "data", "bench", "report", "export", "serve")
_OURS = "RECSYS_SET_HYDRA_FULL_ERROR"  # marks a HYDRA_FULL_ERROR that main() set, not the user


def _train_main(debug: bool) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="pkg://recsys.conf", config_name="train")
    def run(cfg: DictConfig) -> float:
        from hydra.types import RunMode

        from recsys.commands.train import train_or_resume

        hydra_cfg = HydraConfig.get()
        sweep_dir = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else None
        try:
            return train_or_resume(cfg, cfg.paths.output_dir, sweep_dir)
        except Exception as err:
            if not debug and user_error_line(err) is not None:
                raise _Refused(err) from err  # past Hydra's job runner, which would print a line of its own
            raise

    run()


EXPORT_SETTINGS = {
    "run_dir": "the run folder (recsys train's paths.output_dir: it holds metrics.json)",
    "out": "the export folder to write (model.onnx, the feature artifacts, metadata.json)",
    "rows": "validation rows of the parity check against PyTorch (default 10000)",
    "cache_dir": "the feature cache holding (or rebuilding) the validation rows (default: the run config's paths.cache_dir)",
    "index": "a next-item run's retrieval index: exact, hnsw or ivf (default exact)",
}


def _export_main(args: list[str]) -> None:
    """`recsys export run_dir=DIR out=DIR [rows=N] [cache_dir=DIR] [index=exact|hnsw|ivf]`, in the key=value
    style of `train`. `index` is the retrieval index of a next-item run."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="recsys export", usage="recsys export run_dir=DIR out=EXPORT_DIR [rows=N] [cache_dir=DIR] [index=exact|hnsw|ivf]",
        description="ONNX export of a finished run, with a parity check of ONNX Runtime against PyTorch on validation rows.",
        epilog="settings (KEY=VALUE):\n" + "\n".join(f"  {k:<10} {v}" for k, v in EXPORT_SETTINGS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    settings = parser.parse_args(args).settings
    options = dict(a.split("=", 1) for a in settings if "=" in a)
    unknown = [a for a in settings if "=" not in a or a.split("=", 1)[0] not in EXPORT_SETTINGS]
    if unknown or not {"run_dir", "out"} <= options.keys():
        parser.print_usage(sys.stderr)
        print(f"recsys export: run_dir and out are required; not understood: {unknown}", file=sys.stderr)
        sys.exit(2)
    import logging

    from recsys.serving.export import PARITY_ROWS, export_run

    # One summary line below, not the exporter's and the graph optimiser's notes (a line per folded node or
    # merged initializer, and torch's "torchvision is not installed" for operators no zoo model uses).
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    meta = export_run(options["run_dir"], options["out"], rows=int(options.get("rows", PARITY_ROWS)), cache_dir=options.get("cache_dir"),
                      index=options.get("index", "exact"))
    p = meta["parity"]
    summary = (f"top-{p['retrieval']['k']} agreement with torch {p['retrieval']['topk_agreement_with_torch']:.4f} "
               f"({p['retrieval']['index']} index over {p['retrieval']['items']:,} items)" if "retrieval" in p else
               f"AUC torch {p.get('auc_torch', float('nan')):.6f} onnx {p.get('auc_onnx', float('nan')):.6f}")
    print(f"exported {meta['model']} ({meta['version']}) to {options['out']}: {p['rows']} validation rows, "
          f"max |onnx - torch| {p['max_abs_diff']:.2g}, {summary}")


def _serve_main(args: list[str]) -> None:
    import argparse

    from recsys.serving.app import Limits, serve

    defaults = Limits()
    parser = argparse.ArgumentParser(prog="recsys serve", description="HTTP scoring endpoint on an export folder")
    parser.add_argument("source", help="an export folder (recsys export); a run folder with --backend torch")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get("RECSYS_SERVE_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' (default: $RECSYS_SERVE_TOKEN, else none)")
    parser.add_argument("--max-instances", type=int, default=defaults.max_instances)
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--max-sequence-items", type=int, default=defaults.max_sequence_items)
    parser.add_argument("--max-drain-bytes", type=int, default=defaults.max_drain_bytes,
                        help="an over-limit body is read and dropped up to this size, so the client receives its 413")
    parser.add_argument("--header-timeout", type=float, default=defaults.header_timeout,
                        help="seconds for a request's headers to arrive (408 and closed after)")
    parser.add_argument("--body-timeout", type=float, default=defaults.body_timeout,
                        help="seconds for a request's body to arrive after its headers (408 and closed after)")
    parser.add_argument("--keep-alive-timeout", type=float, default=defaults.keep_alive_timeout,
                        help="seconds an idle keep-alive connection stays open")
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections,
                        help="connections served at once; a request beyond them gets 503")
    parser.add_argument("--max-k", type=int, default=defaults.max_k, help="the most items one POST /v1/recommend may ask for")
    parser.add_argument("--threads", type=int, default=1,
                        help="cores one request may use: a large request is scored in that many row chunks side by side")
    a = parser.parse_args(args)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(a.source, backend=a.backend, host=a.host, port=a.port, token=a.token or None, threads=a.threads,
          limits=Limits(max_instances=a.max_instances, max_body_bytes=a.max_body_bytes, max_sequence_items=a.max_sequence_items,
                        max_drain_bytes=a.max_drain_bytes, header_timeout=a.header_timeout, body_timeout=a.body_timeout,
                        keep_alive_timeout=a.keep_alive_timeout, max_connections=a.max_connections, max_k=a.max_k))


class _Refused(BaseException):
    """A user error on its way out of a Hydra job: not an Exception, so Hydra's job runner lets it pass
    without printing its own "Error executing job" line; main() reports it."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def user_error_line(err: BaseException, command: str = "train") -> str | None:
    """The one line a user error is reported with, or None for an error that is not the user's (a bug:
    its traceback is shown). User errors are the types whose message already says what is wrong and
    what to do: the config's, the data's, export's and run loading's, a non-finite training loss, a
    missing file, and Hydra's own config errors. `command` is the one that failed: a missing config's
    message shows how to pass a config folder to it."""
    from hydra.errors import CompactHydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from recsys.config import ConfigError
    from recsys.features import FeatureError
    from recsys.tasks.base import NonFiniteLoss

    user_types: tuple[type[BaseException], ...] = (ConfigError, FeatureError, NonFiniteLoss, FileNotFoundError,
                                                   CompactHydraException, OmegaConfBaseException)
    try:
        from recsys.serving.export import ExportError
        from recsys.serving.runs import RunError

        user_types += (ExportError, RunError)
    except ImportError:  # the serving extra is not installed; then neither can be raised
        pass
    if not isinstance(err, user_types):
        return None
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, name = err.missing_cfg_file.rsplit("/", 1)
        known = ", ".join(sorted(err.options or [])) or "none"
        usage = "recsys data inspect" if command == "data" else "recsys train"
        return (f"no config {name!r} in the group {group!r} (known: {known}); for a config of your own, pass the "
                f"folder that holds {group}/{name}.yaml: {usage} --config-dir DIR {group}={name} (docs/data.md)")
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    cause = err.__cause__
    if isinstance(err, CompactHydraException) and cause is not None and str(cause).strip():
        text += " (" + " ".join(line.strip() for line in str(cause).splitlines() if line.strip()) + ")"
    return text or type(err).__name__


def show_each_warning_once() -> None:
    """Print each distinct warning (category and text) once per process. Python's own once-per-place rule
    does not hold here: the libraries change the warning filters while a Trainer is built, which resets
    Python's record of what it has shown, so a library's deprecation warning came back with every run of
    a benchmark."""
    import warnings

    if getattr(warnings.showwarning, "_recsys_once", False):
        return
    shown: set[tuple[type, str]] = set()
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202 - warnings' hook
        key = (category, str(message))
        if key not in shown:
            shown.add(key)
            original(message, category, filename, lineno, file, line)

    show._recsys_once = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_each_warning_once()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    # HYDRA_FULL_ERROR set by the user asks for tracebacks; set by main() in a process it started (a DDP
    # worker inherits it), it does not.
    by_user = os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0") and os.environ.get(_OURS) != "1"
    debug = "--debug" in argv or by_user
    argv = [a for a in argv if a != "--debug"]
    # Hydra prints an error it catches itself (a trimmed traceback, or its multi-line config message) and
    # exits; with HYDRA_FULL_ERROR set it raises it instead, so that it reaches the one handler below.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if not by_user:
        os.environ[_OURS] = "1"
    command = argv[0] if argv else ""
    try:
        _dispatch(argv, debug)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"recsys {command}: interrupted", file=sys.stderr)
        sys.exit(130)
    except _Refused as refused:
        print(f"recsys {command}: {user_error_line(refused.error, command)}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:
        line = None if debug else user_error_line(err, command)
        if line is None:
            raise
        print(f"recsys {command}: {line}", file=sys.stderr)
        sys.exit(1)


def _dispatch(argv: list[str], debug: bool) -> None:
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS and os.environ.get("LOCAL_RANK") and "=" in command:
        # A DDP worker: Lightning relaunches `python -m recsys.commands.cli` with the overrides alone
        # (the `train` word was consumed before Hydra saw sys.argv).
        command, rest = "train", argv
    if command == "train":
        # `paths.output_dir=DIR` names the run's folder: make it Hydra's run folder too, so the run's
        # log and config land beside its metrics (unless Hydra's folder is set explicitly).
        out = [a.split("=", 1)[1] for a in rest if a.startswith("paths.output_dir=")]
        if out and not any(a.startswith(("hydra.run.dir=", "-m", "--multirun")) for a in rest):
            rest = [*rest, f"hydra.run.dir={out[-1]}"]
        sys.argv = [sys.argv[0], *rest]
        _train_main(debug)
    elif command == "data":
        from recsys.commands.data import main as data_main

        data_main(rest)
    elif command == "bench":
        from recsys.bench import main as bench_main

        bench_main(rest)
    elif command == "report":
        from recsys.commands.report import main as report_main

        report_main(rest)
    elif command == "export":
        _export_main(rest)
    elif command == "serve":
        _serve_main(rest)
    else:
        print(f"recsys: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
