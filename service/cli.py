"""The ``balances`` command: serve, import wallets, manage API keys and the schema, run the demo.

The only module that reads the environment and prints.  Every failure is one
line on stderr and a non-zero exit, mapped in one place (``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from service.domain import DEFAULT_TENANT
from service.errors import BalancesError, ConfigError, ImportRejected, StartupError
from service.gateway.limits import RestLimits
from service.logs import LOG_FORMATS, setup_logging
from service.settings import CONFIG_ENV_VAR, RestSettings, Settings, load_settings
from service.settings.show import secret_urls
from service.stop_signals import StoppedBySignal, StopSignals

__all__ = ["main"]

DEFAULT_CONFIG = Path("balances.toml")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.run in (_serve, _demo):
            # Long-running: from here to the exit SIGTERM/SIGINT stop what has been
            # started, whatever the moment (service/stop_signals.py).
            with StopSignals().installed() as signals:
                code: int = args.run(args, signals)
        else:
            code = args.run(args)
    except StoppedBySignal as stopped:
        return _fail(f"stopped by {stopped.signal.name} during start-up", 128 + stopped.signal)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    except ImportRejected as exc:
        return _fail(f"import rejected, nothing was written: {exc}")
    except (BalancesError, StartupError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # a file the user named cannot be read or written
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or type(exc).__name__}{where}")
    except KeyboardInterrupt:
        return 130
    return code


def _fail(message: str, code: int = 1) -> int:
    print(f"balances: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="balances", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC server")
    _config_option(serve)
    serve.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        metavar="N",
        help="N processes sharing the gRPC and REST ports (default: 1, a single process)",
    )
    serve.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # service/workers.py
    _log_format_option(serve)
    serve.set_defaults(run=_serve)

    health = commands.add_parser(
        "health", help="ask a server's gRPC health service; exit 0 only when it is SERVING"
    )
    health.add_argument("--target", default="127.0.0.1:50051", metavar="HOST:PORT")
    health.add_argument("--service", default="", help="a service name (default: the server)")
    health.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")
    health.set_defaults(run=_health)

    wallets = commands.add_parser("wallets", help="manage the wallet directory")
    wallet_commands = wallets.add_subparsers(required=True, metavar="COMMAND")
    importer = wallet_commands.add_parser(
        "import", help="import wallets from a JSON or CSV file, all or nothing"
    )
    importer.add_argument("file", type=Path)
    importer.add_argument(
        "--tenant", default=DEFAULT_TENANT, help="tenant name (default: %(default)s)"
    )
    _config_option(importer)
    importer.set_defaults(run=_import_wallets)

    keys = commands.add_parser("keys", help="manage API keys (stored only as SHA-256 digests)")
    key_commands = keys.add_subparsers(required=True, metavar="COMMAND")
    create_key = key_commands.add_parser(
        "create", help="create a key for a tenant and print it once, on stdout"
    )
    create_key.add_argument("--tenant", required=True, help="tenant name")
    _config_option(create_key)
    create_key.set_defaults(run=_create_key)
    revoke_key = key_commands.add_parser("revoke", help="revoke a key by its id")
    revoke_key.add_argument("key_id", metavar="KEY_ID")
    _config_option(revoke_key)
    revoke_key.set_defaults(run=_revoke_key)
    list_keys = key_commands.add_parser(
        "list", help="list keys: id, tenant, created, revoked (never the key)"
    )
    list_keys.add_argument("--tenant", default=None, help="only this tenant's keys")
    _config_option(list_keys)
    list_keys.set_defaults(run=_list_keys)

    database = commands.add_parser("db", help="manage the wallet directory database")
    database_commands = database.add_subparsers(required=True, metavar="COMMAND")
    migrate = database_commands.add_parser(
        "migrate", help="apply pending schema migrations and print the schema version"
    )
    _config_option(migrate)
    migrate.set_defaults(run=_migrate)

    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(required=True, metavar="COMMAND")
    show = config_commands.add_parser(
        "show",
        help="print the effective configuration (the file, then BALANCES_<SECTION>__<KEY>"
        " variables) as TOML, secrets masked",
    )
    _config_option(show)
    show.set_defaults(run=_show_config)

    webhooks = commands.add_parser("webhooks", help="manage balance.updated webhook events")
    webhook_commands = webhooks.add_subparsers(required=True, metavar="COMMAND")
    replay = webhook_commands.add_parser(
        "replay",
        help="queue delivered and failed events created since a time for delivery again"
        " (same webhook-id); a running server sends them within seconds",
    )
    replay.add_argument(
        "--since", required=True, metavar="ISO8601", help="e.g. 2024-01-15T10:30:00Z"
    )
    replay.add_argument("--tenant", default=None, help="only this tenant's events (default: all)")
    _config_option(replay)
    replay.set_defaults(run=_replay_webhooks)

    gateway = commands.add_parser(
        "gateway", help="run only the REST shim, proxying to a gRPC server (a sidecar)"
    )
    gateway.add_argument("--grpc-target", required=True, metavar="HOST:PORT")
    gateway.add_argument("--listen", default=RestSettings.listen, metavar="HOST:PORT")
    gateway.add_argument("--max-body-bytes", type=int, default=RestLimits.max_body_bytes)
    gateway.add_argument(
        "--default-timeout",
        type=float,
        default=RestLimits.default_timeout_seconds,
        metavar="SECONDS",
    )
    _log_format_option(gateway)
    gateway.set_defaults(run=_gateway)

    demo = commands.add_parser(
        "demo", help="start two local chains, deploy, import demo wallets and serve"
    )
    demo.add_argument(
        "--state",
        type=Path,
        default=Path("demo.json"),
        help="where to write what the demo started (default: demo.json)",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path(".demo"),
        help="where the demo keeps its config and database (default: .demo)",
    )
    demo.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free port)")
    demo.add_argument("--rest-port", type=int, default=8080, help="REST port (0: any free port)")
    demo.set_defaults(run=_demo)

    demo_transfer = commands.add_parser(
        "demo-transfer", help="move a stablecoin between two wallets of a running demo"
    )
    demo_transfer.add_argument("--state", type=Path, default=Path("demo.json"))
    demo_transfer.add_argument("--from", dest="from_wallet", required=True, metavar="WALLET_ID")
    demo_transfer.add_argument("--to", dest="to_wallet", required=True, metavar="WALLET_ID")
    demo_transfer.add_argument("--token", default="USDC")
    demo_transfer.add_argument("--amount", required=True, help="e.g. 10.25")
    demo_transfer.set_defaults(run=_demo_transfer)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML settings file (default: ${CONFIG_ENV_VAR}, else {DEFAULT_CONFIG})",
    )


def _settings(args: argparse.Namespace, *, log_level: str | None = None) -> Settings:
    path = args.config or Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG)
    settings = load_settings(path, environ=os.environ)
    setup_logging(
        secret_urls(settings),
        level=log_level,
        log_format=getattr(args, "log_format", None) or settings.logging.format,
        access_log=settings.logging.access_log,
    )
    return settings


def _log_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="log lines on stderr as text or JSON objects (default: [logging] format, else text)",
    )


def _quiet_settings(args: argparse.Namespace) -> Settings:
    """Settings for a one-shot command: its output is the answer, logs only warn."""
    return _settings(args, log_level=os.environ.get("BALANCES_LOG_LEVEL", "WARNING"))


def _worker_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def _serve(args: argparse.Namespace, signals: StopSignals) -> int:
    from service.run import serve

    settings = _settings(args)
    if args.worker is not None or args.workers > 1:
        from service import workers

        if args.worker is not None:  # one of the processes of `serve --workers`
            spec = workers.WorkerSpec.loads(args.worker)
            signals.run(
                lambda: workers.serve_as_worker(
                    settings, spec, stop=signals.stop, on_ready=signals.serving
                )
            )
            return 0
        config = (args.config or Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG)).resolve()
        if args.log_format is not None:  # the workers read their settings as this one did
            os.environ["BALANCES_LOGGING__FORMAT"] = args.log_format
        return signals.run(
            lambda: workers.supervise(
                settings, args.workers, config, stop=signals.stop, on_ready=signals.serving
            )
        )
    signals.run(
        lambda: serve(settings, on_ready=lambda _ports: signals.serving(), stop=signals.stop)
    )
    return 0


def _health(args: argparse.Namespace) -> int:
    from service.health_check import check_health

    status = asyncio.run(check_health(args.target, args.service, args.timeout))
    print(status)
    return 0 if status == "SERVING" else 1


def _import_wallets(args: argparse.Namespace) -> int:
    from service import commands

    print(asyncio.run(commands.import_wallets(_quiet_settings(args), args.file, args.tenant)))
    return 0


def _create_key(args: argparse.Namespace) -> int:
    from service import commands

    created = asyncio.run(commands.create_key(_quiet_settings(args), args.tenant))
    print(created.plaintext, flush=True)
    print(created.note, file=sys.stderr)
    return 0


def _revoke_key(args: argparse.Namespace) -> int:
    from service import commands

    print(asyncio.run(commands.revoke_key(_quiet_settings(args), args.key_id)))
    return 0


def _list_keys(args: argparse.Namespace) -> int:
    from service import commands

    for line in asyncio.run(commands.list_keys(_quiet_settings(args), args.tenant)):
        print(line)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from service import commands

    print(asyncio.run(commands.migrate(_quiet_settings(args))))
    return 0


def _show_config(args: argparse.Namespace) -> int:
    from service.settings.show import show_settings

    print(show_settings(_quiet_settings(args)))
    return 0


def _replay_webhooks(args: argparse.Namespace) -> int:
    from service import commands

    since = commands.parse_since(args.since)
    settings = _quiet_settings(args)
    print(asyncio.run(commands.replay_webhooks(settings, args.tenant, since)))
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from service.gateway.sidecar import run_sidecar

    setup_logging(log_format=args.log_format or "text")
    limits = RestLimits(
        max_body_bytes=args.max_body_bytes, default_timeout_seconds=args.default_timeout
    )
    asyncio.run(run_sidecar(args.grpc_target, args.listen, limits))
    return 0


def _demo_transfer(args: argparse.Namespace) -> int:
    from service.demo import demo_transfer

    print(
        asyncio.run(
            demo_transfer(
                state_path=args.state,
                from_wallet=args.from_wallet,
                to_wallet=args.to_wallet,
                token=args.token,
                amount=args.amount,
            )
        )
    )
    return 0


def _demo(args: argparse.Namespace, signals: StopSignals) -> int:
    from service.demo import run_demo

    return signals.run(
        lambda: run_demo(
            state_path=args.state,
            workdir=args.workdir,
            port=args.port,
            rest_port=args.rest_port,
            stop=signals.stop,
            on_serving=signals.serving,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
