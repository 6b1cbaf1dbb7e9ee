"""Command line of the webhook: `gpushare webhook` and `gpushare certs generate`.

Cheap to import: Flask, gunicorn and cryptography are imported inside the commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

_FLAG_SETTINGS = {
    "timekeeper_url": "timekeeper_url",
    "failure_policy": "failure_policy",
    "sidecar_mode": "sidecar_mode",
    "sidecar_image": "sidecar_image",
    "timekeeper_timeout": "timekeeper_timeout_seconds",
}


def register(subcommands: argparse._SubParsersAction[Any]) -> None:
    """Add `webhook` and `certs` to the `gpushare` parser."""
    from webhook.settings import describe

    environment = "\n".join(
        f"  {name} (default {default!r}): {doc}" for name, default, doc in describe()
    )
    serve = subcommands.add_parser(
        "webhook",
        help="serve the admission webhook over TLS",
        description=(
            "Serve /validate, /mutate, /healthz, /readyz and /metrics over TLS. Every setting"
            " also reads GPUSHARE_WEBHOOK_<NAME> from the environment (see docs/webhook.md);"
            " flags win."
        ),
        epilog=f"environment:\n{environment}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=8443, help="port to listen on (default 8443)")
    serve.add_argument("--bind-fd", type=int, help="serve on this inherited listening socket")
    serve.add_argument("--cert", required=True, help="serving certificate (PEM, with chain)")
    serve.add_argument("--key", required=True, help="private key of the certificate (PEM)")
    serve.add_argument("--timekeeper-url", help="base URL of the timekeeper")
    serve.add_argument("--timekeeper-timeout", help="seconds an admission waits at most")
    serve.add_argument("--failure-policy", help="fail-open or fail-closed")
    serve.add_argument("--sidecar-mode", help="native or classic")
    serve.add_argument("--sidecar-image", help="image of the accounting sidecar")
    serve.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    serve.add_argument("--threads", type=int, default=8, help="threads per worker")
    serve.add_argument("--log-format", choices=("json", "text"), default="json")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(func=run_webhook)

    certs = subcommands.add_parser("certs", help="TLS certificates for the webhook")
    actions = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate",
        help="write a CA and a serving certificate; print the caBundle",
        description=(
            "Write ca.crt, tls.crt and tls.key (and ca.key for a new CA) into --out and print"
            " the base64 caBundle for the webhook configurations. Pass --ca-cert/--ca-key to"
            " rotate the serving certificate under the same CA."
        ),
    )
    generate.add_argument("--out", required=True, type=Path, help="folder to write into")
    generate.add_argument("--dns", nargs="+", default=None, metavar="NAME", help="DNS names (SANs)")
    generate.add_argument("--ip", nargs="+", default=[], metavar="ADDRESS", help="IP SANs")
    generate.add_argument("--days", type=int, default=365, help="validity of the serving cert")
    generate.add_argument("--ca-cert", type=Path, help="sign with this CA certificate")
    generate.add_argument("--ca-key", type=Path, help="private key of --ca-cert")
    generate.set_defaults(func=run_certs_generate)


def run_webhook(args: argparse.Namespace) -> int:
    from gpushare import logs
    from webhook.errors import SettingsError
    from webhook.wsgi import settings_from_env

    logs.configure(log_format=args.log_format, level=args.log_level)
    overrides = {
        setting: getattr(args, flag)
        for flag, setting in _FLAG_SETTINGS.items()
        if getattr(args, flag) is not None
    }
    problems: list[str] = []
    try:
        settings = settings_from_env(**overrides)
    except SettingsError as err:
        problems.extend(_name_flags(err.problems, overrides))
    for flag, path in (("--cert", args.cert), ("--key", args.key)):
        if not Path(path).is_file():
            problems.append(f"{flag}: no such file (got {path!r})")
    token_file = os.environ.get("GPUSHARE_WEBHOOK_TIMEKEEPER_TOKEN_FILE", "").strip()
    if token_file and not os.access(token_file, os.R_OK):
        # Read for every lookup; missing at start it would turn every admission into a
        # failure-policy decision.
        problems.append(
            f"GPUSHARE_WEBHOOK_TIMEKEEPER_TOKEN_FILE: must be a readable file (got {token_file!r})"
        )
    for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value < 1:
            problems.append(f"{flag}: must be at least 1 (got {value})")
    if not 0 <= args.port <= 65535:
        problems.append(f"--port: must be 0..65535 (got {args.port})")
    if problems:
        print("gpushare webhook: invalid configuration:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2

    import ssl

    from webhook.certs import validity_problem

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(args.cert, args.key)
    except (OSError, ssl.SSLError) as err:
        print(
            f"gpushare webhook: --cert/--key do not load ({err}): both must be PEM files and"
            f" the key must be the certificate's (got {args.cert!r} and {args.key!r})",
            file=sys.stderr,
        )
        return 2
    expiry = validity_problem(Path(args.cert))
    if expiry is not None:
        print(f"gpushare webhook: --cert: {expiry} (got {args.cert!r})", file=sys.stderr)
        return 2

    from webhook.app import create_app
    from webhook.server import ServerOptions, serve

    bind = f"fd://{args.bind_fd}" if args.bind_fd is not None else f"{args.host}:{args.port}"
    if ":" in args.host and args.bind_fd is None:
        bind = f"[{args.host}]:{args.port}"
    serve(
        lambda: create_app(settings),
        ServerOptions(
            bind=bind,
            cert_file=args.cert,
            key_file=args.key,
            workers=args.workers,
            threads=args.threads,
            access_log=args.access_log,
            # Room above the app's own limit, so that the app refuses with its message.
            max_body_bytes=settings.max_body_bytes + 64 * 1024,
        ),
    )
    return 0


def _name_flags(problems: list[str], overrides: dict[str, str]) -> list[str]:
    """Problems of settings given as flags name the flag first (the variable was not set)."""
    from webhook.settings import ENV_PREFIX

    flags = {setting: flag for flag, setting in _FLAG_SETTINGS.items()}
    named = []
    for problem in problems:
        for setting in overrides:
            variable = ENV_PREFIX + setting.upper()
            if problem.startswith(variable + ":"):
                flag = "--" + flags[setting].replace("_", "-")
                problem = f"{flag} ({variable}){problem[len(variable) :]}"
                break
        named.append(problem)
    return named


def run_certs_generate(args: argparse.Namespace) -> int:
    from webhook import certs

    dns_names = tuple(args.dns) if args.dns is not None else certs.DEFAULT_DNS_NAMES
    try:
        bundle = certs.generate(
            args.out,
            dns_names,
            ip_addresses=tuple(args.ip),
            days=args.days,
            ca_cert=args.ca_cert,
            ca_key=args.ca_key,
        )
    except (OSError, ValueError) as err:
        print(f"gpushare certs generate: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {bundle.ca_cert}, {bundle.cert}, {bundle.key}; caBundle:",
        file=sys.stderr,
    )
    print(bundle.ca_bundle)
    return 0
