"""The ``balances`` command: serve, import wallets, manage API keys and the schema, run the demo.

The only module that reads the environment and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import CONFIG_ENV_VAR, Settings, load_settings
from service.domain import DEFAULT_TENANT, parse_tenant
from service.errors import BalancesError, ConfigError, ImportRejected, InvalidArgument
from service.logs import setup_logging

if TYPE_CHECKING:
    from service.directory.sqlite import SqliteWalletDirectory

__all__ = ["main"]

DEFAULT_CONFIG = Path("balances.toml")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"balances: configuration error: {exc}", file=sys.stderr)
        return 2
    except ImportRejected as exc:
        print(f"balances: import rejected, nothing was written: {exc}", file=sys.stderr)
        return 1
    except BalancesError as exc:
        print(f"balances: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="balances", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC server")
    _config_option(serve)
    serve.set_defaults(run=_serve)

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
    gateway.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    gateway.add_argument("--max-body-bytes", type=int, default=1 << 20)
    gateway.add_argument("--default-timeout", type=float, default=30.0, metavar="SECONDS")
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


def _settings(args: argparse.Namespace) -> Settings:
    path = args.config or Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG)
    settings = load_settings(path)
    setup_logging(u for n in settings.networks for u in n.rpc_urls)
    return settings


def _serve(args: argparse.Namespace) -> int:
    from service.server import serve

    settings = _settings(args)
    asyncio.run(serve(settings))
    return 0


def _import_wallets(args: argparse.Namespace) -> int:
    from service.directory.importfile import import_wallet_file
    from service.directory.sqlite import SqliteWalletDirectory

    parse_tenant(args.tenant)
    settings = _settings(args)

    async def run() -> int:
        directory = await SqliteWalletDirectory.open(settings.directory_path)
        try:
            wallets = await import_wallet_file(
                directory, args.file, args.tenant, [n.name for n in settings.networks]
            )
        finally:
            await directory.close()
        print(f"imported {len(wallets)} wallets into {settings.directory_path}")
        return 0

    return asyncio.run(run())


def _create_key(args: argparse.Namespace) -> int:
    from service.auth.keys import new_api_key

    tenant = parse_tenant(args.tenant)
    settings = _settings(args)

    async def run(directory: SqliteWalletDirectory) -> int:
        key = new_api_key()
        record = await directory.add_key(key.key_id, tenant, key.digest)
        print(key.plaintext, flush=True)
        print(
            f"created API key {record.key_id} for tenant {record.tenant};"
            " it is shown only this once: store it now",
            file=sys.stderr,
        )
        return 0

    return asyncio.run(_with_directory(settings, run))


def _revoke_key(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def run(directory: SqliteWalletDirectory) -> int:
        record = await directory.revoke_key(args.key_id)
        assert record.revoked_at is not None
        print(
            f"revoked API key {record.key_id} of tenant {record.tenant}"
            f" (at {_shown_time(record.revoked_at)})"
        )
        return 0

    return asyncio.run(_with_directory(settings, run))


def _list_keys(args: argparse.Namespace) -> int:
    tenant = None if args.tenant is None else parse_tenant(args.tenant)
    settings = _settings(args)

    async def run(directory: SqliteWalletDirectory) -> int:
        records = await directory.list_keys(tenant)
        rows = [("KEY ID", "TENANT", "CREATED", "REVOKED")] + [
            (
                r.key_id,
                r.tenant,
                _shown_time(r.created_at),
                "-" if r.revoked_at is None else _shown_time(r.revoked_at),
            )
            for r in records
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
            print("  ".join(cells).rstrip())
        return 0

    return asyncio.run(_with_directory(settings, run))


def _migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def run(directory: SqliteWalletDirectory) -> int:
        version = await directory.schema_version()
        print(f"wallet directory {settings.directory_path} is at schema version {version}")
        return 0

    return asyncio.run(_with_directory(settings, run))


def _replay_webhooks(args: argparse.Namespace) -> int:
    from service.webhooks.manage import WebhookManagement

    tenant = None if args.tenant is None else parse_tenant(args.tenant)
    since = _parse_since(args.since)
    settings = _settings(args)

    async def run(directory: SqliteWalletDirectory) -> int:
        count = await WebhookManagement(directory, settings.webhooks).replay(tenant, since)
        whose = "" if tenant is None else f" of tenant {tenant}"
        print(f"requeued {count} webhook events{whose} created since {_shown_time(since)}")
        return 0

    return asyncio.run(_with_directory(settings, run))


def _parse_since(text: str) -> datetime:
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"--since {text[:40]!r} is not an ISO 8601 time like 2024-01-15T10:30:00Z"
        ) from None
    if since.tzinfo is None:
        raise InvalidArgument("--since needs a time zone, e.g. 2024-01-15T10:30:00Z")
    return since


async def _with_directory(
    settings: Settings, run: Callable[[SqliteWalletDirectory], Awaitable[int]]
) -> int:
    """Open (and so migrate) the configured directory, ``run`` with it, close it."""
    from service.directory.sqlite import SqliteWalletDirectory

    directory = await SqliteWalletDirectory.open(settings.directory_path)
    try:
        return await run(directory)
    finally:
        await directory.close()


def _shown_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gateway(args: argparse.Namespace) -> int:
    from service.gateway.app import GatewayLimits
    from service.gateway.serve import start_gateway
    from service.server import API_SERVICES

    setup_logging()
    limits = GatewayLimits(
        max_body_bytes=args.max_body_bytes, default_timeout_seconds=args.default_timeout
    )

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        gateway = await start_gateway(args.grpc_target, args.listen, API_SERVICES, limits)
        try:
            await stop.wait()
        finally:
            await gateway.aclose()
        return 0

    return asyncio.run(run())


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


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return asyncio.run(
        run_demo(
            state_path=args.state, workdir=args.workdir, port=args.port, rest_port=args.rest_port
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
