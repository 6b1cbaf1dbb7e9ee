"""Command line of the timekeeper: registers its subcommands on the `gpushare` parser.

Kept cheap to import: heavy modules are imported inside the command functions.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timekeeper.settings import ENV_NAMES, FIELD_NAMES, flag

if TYPE_CHECKING:
    from timekeeper.budgets import Budget

DEFAULT_URL = "http://127.0.0.1:8080"

_HELP = {
    "database_url": "SQLAlchemy URL (sqlite:///PATH or postgresql+psycopg://...); "
    "default: the SQLite file ~/.local/state/gpushare/timekeeper.db",
    "budgets_path": "budgets YAML file (reloaded when it changes); default: all unlimited",
    "budgets_check_seconds": "how often to check the budgets file for changes (default 2)",
    "tokens_path": "standalone auth: YAML `tokens: [{token, namespace}]` (reloaded when it "
    "changes)",
    "tokens_check_seconds": "how often to check the tokens file for changes (default 2)",
    "jwks_file": "cluster auth: the ServiceAccount signing keys (JWKS file)",
    "jwks_url": "cluster auth: URL of the ServiceAccount signing keys (JWKS)",
    "oidc_issuer": "cluster auth: the ServiceAccount issuer, keys found by OIDC discovery",
    "oidc_discovery_url": "cluster auth: URL of the OIDC discovery document (default: the "
    "issuer's); without --oidc-issuer the issuer is the document's",
    "oidc_ca_file": "CA bundle for fetching the JWKS / discovery document",
    "oidc_token_file": "bearer token for fetching the JWKS / discovery document",
    "token_issuer": "required `iss` of ServiceAccount tokens (default: the OIDC issuer, "
    "given or discovered)",
    "allow_unauthenticated_reports": "demo only: accept reports without a token",
    "read_requires_token": "read endpoints require a valid token too",
    "clock_skew_seconds": "how far in the future a report's end may lie (default 60)",
    "max_interval_seconds": "longest interval one report may cover (default 86400)",
    "log_format": "text or json (default text)",
    "log_level": "DEBUG, INFO, WARNING or ERROR (default INFO)",
    "metrics_multiprocess_dir": "folder shared by the workers for metrics (default: a "
    "temporary one)",
}
_BOOLEANS = ("allow_unauthenticated_reports", "read_requires_token")


def register(subcommands: argparse._SubParsersAction[Any]) -> None:
    """Add this part's subcommands: `timekeeper`, `usage`, `db`, `budgets check`,
    `quotas sync`."""
    budgets = subcommands.add_parser(
        "budgets", help="work with budgets files", description="Work with budgets files."
    )
    budget_commands = budgets.add_subparsers(dest="budgets_command", metavar="ACTION")
    budget_commands.required = True
    check = budget_commands.add_parser(
        "check",
        help="validate a budgets file",
        description=(
            "Validate a budgets file: print every problem with its field path and exit 1, "
            "or print the budget of every namespace it lists and exit 0."
        ),
    )
    check.add_argument(
        "file", type=Path, metavar="FILE", help="the budgets YAML file ('-': standard input)"
    )
    check.set_defaults(func=budgets_check)

    serve = subcommands.add_parser(
        "timekeeper",
        help="serve the timekeeper (gunicorn)",
        description="Serve the timekeeper's REST API with gunicorn. A setting not given as "
        "a flag comes from the environment variable in brackets (flags win); the same "
        "variables configure timekeeper.wsgi:app under any WSGI server.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    serve.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    serve.add_argument("--threads", type=int, default=4, help="threads per worker")
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not run the database migrations before serving",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    for name in FIELD_NAMES:
        if name in _BOOLEANS:
            serve.add_argument(
                flag(name),
                dest=name,
                action="store_true",
                default=None,
                help=f"{_HELP[name]} [{ENV_NAMES[name]}]",
            )
        else:
            serve.add_argument(
                flag(name), dest=name, metavar="VALUE", help=f"{_HELP[name]} [{ENV_NAMES[name]}]"
            )
    serve.set_defaults(func=serve_command)

    usage = subcommands.add_parser(
        "usage",
        help="print budgets and usage from the timekeeper",
        description="Budget and usage read from the timekeeper's API: every namespace; one "
        "namespace's pods (allocated, used and idle GPU-hours) in its current period; every "
        "namespace's pods (-A, a chargeback export with -o csv); or the pods that held a GPU "
        "share and left it idle (--idle).",
    )
    usage.add_argument(
        "namespace", nargs="?", help="one namespace: its use by pod (with --idle: only it)"
    )
    usage.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="the pods of every namespace with a budget entry or use",
    )
    usage.add_argument(
        "--idle",
        action="store_true",
        help="pods whose measured use stayed below --threshold of their share",
    )
    usage.add_argument(
        "--threshold",
        type=float,
        default=0.1,
        help="with --idle: used / allocated below this is idle (default 0.1)",
    )
    usage.add_argument(
        "--window-hours",
        type=float,
        default=24.0,
        help="with --idle: how far back to look (default 24)",
    )
    usage.add_argument(
        "--from", dest="start", metavar="TIME", help="start (RFC 3339; default: period start)"
    )
    usage.add_argument(
        "--to", dest="end", metavar="TIME", help="end (RFC 3339; default: period end)"
    )
    usage.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "csv"),
        default="table",
        help="table (default), json (the API's answer) or csv",
    )
    usage.add_argument("--url", default=DEFAULT_URL, help=f"timekeeper URL (default {DEFAULT_URL})")
    usage.add_argument("--token", help="bearer token, when reads require one")
    usage.set_defaults(func=usage_command)

    quotas = subcommands.add_parser(
        "quotas",
        help="keep the budgets file's concurrent caps as ResourceQuotas",
        description="Work with the ResourceQuotas that enforce maxVcudaCore/maxVcudaMemory.",
    )
    quota_commands = quotas.add_subparsers(dest="quotas_command", metavar="ACTION")
    quota_commands.required = True
    sync = quota_commands.add_parser(
        "sync",
        help="create, update and remove the gpushare-gpu ResourceQuotas (a controller loop)",
        description="Keep one ResourceQuota named gpushare-gpu (label "
        "app.kubernetes.io/managed-by=gpushare-quotas) in every namespace whose budget sets "
        "maxVcudaCore or maxVcudaMemory, and remove it where the budget no longer does. "
        "Quotas without that label are never touched. Runs until stopped, a round every "
        "--interval-seconds and at once when the budgets file changes.",
    )
    sync.add_argument("--budgets", type=Path, required=True, help="the budgets YAML file")
    sync.add_argument(
        "--kubeconfig", help="kubeconfig file (default: the in-cluster ServiceAccount)"
    )
    sync.add_argument(
        "--namespace-selector",
        default="",
        help="only namespaces with these labels (a label selector, e.g. gpushare.io/quotas=on); "
        "default: every namespace",
    )
    sync.add_argument(
        "--exclude-namespace",
        action="append",
        metavar="NAME",
        help="a namespace the defaults never give a quota (repeatable; default: kube-system, "
        "kube-public, kube-node-lease); a namespace listed by name in the file still gets one",
    )
    sync.add_argument(
        "--interval-seconds",
        type=float,
        default=30.0,
        help="seconds between rounds, which also catch new namespaces (default 30)",
    )
    sync.add_argument("--once", action="store_true", help="one round, then exit")
    sync.add_argument("--log-format", choices=("text", "json"), default="text")
    sync.set_defaults(func=quotas_sync_command)

    db = subcommands.add_parser(
        "db", help="database migrations", description="Database schema migrations (alembic)."
    )
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for action, summary in (
        ("upgrade", "migrate the schema up (default: to the newest revision)"),
        ("downgrade", "migrate the schema down to a revision you name"),
    ):
        parser = actions.add_parser(action, help=summary, description=summary + ".")
        parser.add_argument(
            "--database-url",
            help="SQLAlchemy URL; default: $GPUSHARE_DATABASE_URL, else the timekeeper's "
            "SQLite file",
        )
        if action == "upgrade":
            parser.add_argument(
                "revision", nargs="?", default="head", help="target revision (default: head)"
            )
        else:
            parser.add_argument(
                "revision",
                help="target revision, e.g. 0001; 'base' deletes every table, the usage "
                "ledger included",
            )
            parser.add_argument(
                "--delete-ledger",
                action="store_true",
                help="confirm a downgrade that drops the usage ledger (to base); without it "
                "such a downgrade is refused",
            )
        parser.set_defaults(func=db_command, action=action)


def _settings_or_exit(
    flags: dict[str, object],
    command: str = "gpushare timekeeper",
    *,
    from_environment: Iterable[str] = FIELD_NAMES,
) -> Any:
    """Settings from the flags given and, for the fields in `from_environment` that no flag
    sets, from their `GPUSHARE_*` variables (so that secrets such as a database password
    need not be on the command line); None after printing every problem."""
    from timekeeper.errors import ConfigError
    from timekeeper.settings import parse_settings

    raw: dict[str, object] = {
        name: os.environ[ENV_NAMES[name]]
        for name in from_environment
        if flags.get(name) is None and ENV_NAMES[name] in os.environ
    }
    from_env = set(raw)
    raw.update((name, value) for name, value in flags.items() if value is not None)
    try:
        return parse_settings(
            raw, label=lambda name: ENV_NAMES[name] if name in from_env else flag(name)
        )
    except ConfigError as err:
        for problem in err.problems:
            print(f"{command}: {problem}", file=sys.stderr)
        return None


def serve_command(args: argparse.Namespace) -> int:
    """`gpushare timekeeper`."""
    settings = _settings_or_exit({name: getattr(args, name) for name in FIELD_NAMES})
    if settings is None:
        return 2
    problems = []
    if not 0 <= args.port <= 65535:
        problems.append(f"--port: must be 0..65535 (got {args.port})")
    if args.workers < 1:
        problems.append(f"--workers: must be at least 1 (got {args.workers})")
    if args.threads < 1:
        problems.append(f"--threads: must be at least 1 (got {args.threads})")
    if problems:
        for problem in problems:
            print(f"gpushare timekeeper: {problem}", file=sys.stderr)
        return 2

    from gpushare import logs
    from timekeeper import database
    from timekeeper.budgets import BudgetsError
    from timekeeper.errors import ConfigError
    from timekeeper.server import ServeOptions, serve

    logs.configure(log_format=settings.log_format, level=settings.log_level)
    if not args.no_migrate:
        failure = migrate(database.upgrade, settings.database, "head")
        if failure is not None:
            print(f"gpushare timekeeper: {failure}", file=sys.stderr)
            return 1
    options = ServeOptions(
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        access_log=args.access_log,
    )
    try:
        return serve(settings, options)
    except (ConfigError, BudgetsError) as err:
        for problem in err.problems:
            print(f"gpushare timekeeper: {problem}", file=sys.stderr)
        return 2


def quotas_sync_command(args: argparse.Namespace) -> int:
    """`gpushare quotas sync`."""
    import signal
    import threading

    from gpushare import logs
    from timekeeper.budgets import BudgetsError
    from timekeeper.policy_source import PolicySource
    from timekeeper.quota_sync import KubernetesQuotaApi, QuotaApiError, QuotaController
    from timekeeper.quotas import DEFAULT_EXCLUDED_NAMESPACES

    name = "gpushare quotas sync"
    if not 1 <= args.interval_seconds <= 86400:
        print(
            f"{name}: --interval-seconds: must be 1..86400 (got {args.interval_seconds:g})",
            file=sys.stderr,
        )
        return 2
    logs.configure(log_format=args.log_format, level="INFO")
    try:
        source = PolicySource(args.budgets)
        api = KubernetesQuotaApi.from_environment(args.kubeconfig)
    except BudgetsError as err:
        for problem in err.problems:
            print(f"{name}: --budgets: {problem}", file=sys.stderr)
        return 2
    except QuotaApiError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    controller = QuotaController(
        api,
        source,
        namespace_selector=args.namespace_selector,
        excluded_namespaces=tuple(args.exclude_namespace or DEFAULT_EXCLUDED_NAMESPACES),
    )
    if args.once:
        try:
            result = controller.sync_once()
        except QuotaApiError as err:
            print(f"{name}: {err}", file=sys.stderr)
            return 1
        plan = result.plan
        print(
            f"quotas: {len(plan.create)} created, {len(plan.update)} updated, "
            f"{len(plan.delete)} removed, {len(plan.foreign)} left alone (not gpushare's)"
        )
        return 1 if result.errors else 0
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    controller.run(interval_seconds=args.interval_seconds, stop=stop)
    return 0


def db_command(args: argparse.Namespace) -> int:
    """`gpushare db upgrade|downgrade`."""
    settings = _settings_or_exit(
        {"database_url": args.database_url, "allow_unauthenticated_reports": True},
        f"gpushare db {args.action}",
        from_environment=("database_url",),
    )
    if settings is None:
        return 2
    import sqlalchemy as sa

    from timekeeper import database

    action = database.upgrade if args.action == "upgrade" else database.downgrade
    if args.action == "downgrade" and not args.delete_ledger:
        try:
            dropped = database.ledger_dropped_by_downgrade(settings.database, args.revision)
        except sa.exc.OperationalError as err:
            shown = sa.make_url(settings.database).render_as_string(hide_password=True)
            print(
                f"gpushare db downgrade: cannot reach the database {shown}: "
                f"{str(err.orig).strip()}",
                file=sys.stderr,
            )
            return 1
        except ValueError as err:
            print(
                f"gpushare db downgrade: revision: {err} (got {args.revision!r})", file=sys.stderr
            )
            return 1
        if dropped is not None:
            print(
                f"gpushare db downgrade: revision: downgrading to {args.revision} drops the "
                f"usage ledger ({dropped} stored reports) and the running totals; add "
                "--delete-ledger to confirm",
                file=sys.stderr,
            )
            return 1
    problem = migrate(action, settings.database, args.revision)
    if problem is not None:
        print(f"gpushare db {args.action}: {problem}", file=sys.stderr)
        return 1
    engine = database.make_engine(settings.database)
    with engine.connect() as connection:
        revision = database.current_revision(connection)
    engine.dispose()
    shown = sa.make_url(settings.database).render_as_string(hide_password=True)
    print(f"{shown}: at revision {revision or 'base (empty)'}")
    return 0


def migrate(action: Any, url: str, revision: str) -> str | None:
    """Run `action(url, revision)` (`database.upgrade` or `downgrade`); None when it worked,
    else one line saying what went wrong (never a traceback)."""
    import sqlalchemy as sa
    from alembic.util import CommandError

    shown = sa.make_url(url).render_as_string(hide_password=True)
    try:
        action(url, revision)
    except sa.exc.OperationalError as err:
        return f"cannot reach the database {shown}: {str(err.orig).strip()}"
    except sa.exc.DatabaseError as err:
        return f"{shown} is not a usable database: {str(err.orig).strip()}"
    except CommandError as err:
        return f"revision: {err} (got {revision!r})"
    except OSError as err:
        return f"cannot create the database {shown}: {err.strerror or err}"
    return None


def usage_command(args: argparse.Namespace) -> int:
    """`gpushare usage [NAMESPACE]`."""
    from timekeeper.usage_table import UsageClientError, UsageQuery, check_url, print_usage

    problem = check_url(args.url)
    if problem is not None:
        print(f"gpushare usage: --url: {problem} (got {args.url!r})", file=sys.stderr)
        return 2
    problems = []
    if not 0 <= args.threshold <= 1:
        problems.append(f"--threshold: must be a number in 0..1 (got {args.threshold:g})")
    if not 0 < args.window_hours <= 744:
        problems.append(
            f"--window-hours: must be above 0 and at most 744 (got {args.window_hours:g})"
        )
    if args.all_namespaces and (args.namespace or args.idle):
        problems.append("-A: lists every namespace; give no NAMESPACE and no --idle with it")
    if args.idle and (args.start or args.end):
        problems.append("--from/--to: not with --idle, which looks back --window-hours")
    for problem in problems:
        print(f"gpushare usage: {problem}", file=sys.stderr)
    if problems:
        return 2
    token = args.token
    if token is not None and not re.fullmatch(r"[\x21-\x7e]+", token):
        # Never print the token itself: describe it.
        print(
            "gpushare usage: --token: must be printable ASCII without spaces (a bearer token) "
            f"(got a value of {len(args.token)} characters)",
            file=sys.stderr,
        )
        return 2
    query = UsageQuery(
        namespace=args.namespace,
        all_namespaces=args.all_namespaces,
        idle=args.idle,
        threshold=args.threshold,
        window_hours=args.window_hours,
        output=args.output,
        start=args.start,
        end=args.end,
    )
    try:
        print_usage(args.url, query, token=args.token, out=sys.stdout)
        sys.stdout.flush()
    except UsageClientError as err:
        print(f"gpushare usage: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `gpushare usage | head`: the reader left; stop quietly, as other tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0


def budgets_check(args: argparse.Namespace) -> int:
    """`gpushare budgets check FILE`."""
    from timekeeper.budgets import BudgetsError, load_budgets, parse_budgets

    path: Path = args.file
    try:
        policy = parse_budgets(sys.stdin.read()) if str(path) == "-" else load_budgets(path)
    except BudgetsError as err:
        for problem in err.details:
            where = f"{path}:{problem.line}" if problem.line is not None else str(path)
            print(f"{where}: {problem}", file=sys.stderr)
        count = len(err.details)
        print(f"{path}: invalid, {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    print(f"defaults: {describe_budget(policy.defaults)}")
    for name in sorted(policy.namespaces):
        print(f"{name}: {describe_budget(policy.namespaces[name])}")
    count = len(policy.namespaces)
    print(f"{path}: valid, {count} namespace{'s' if count != 1 else ''} listed")
    return 0


def describe_budget(budget: Budget) -> str:
    """One line: `500 GPU-hours per month (Europe/Berlin), warning at 80%, then deny`."""
    if budget.period.kind == "rolling":
        period = f"over the last {budget.period.rolling_days} days"
    else:
        period = f"per {budget.period.kind} ({budget.timezone})"
    caps = []
    if budget.max_vcuda_core is not None:
        caps.append(f"vcuda-core {budget.max_vcuda_core}")
    if budget.max_vcuda_memory is not None:
        caps.append(f"vcuda-memory {budget.max_vcuda_memory}")
    held = f"; at most {' and '.join(caps)} held at once" if caps else ""
    if budget.gpu_hours is None:
        return f"unlimited GPU-hours {period}{held}"
    warning = (
        "no warning"
        if budget.warn_at_percent >= 100
        else f"warning at {_number(budget.warn_at_percent)}%"
    )
    action = str(budget.when_exhausted)
    if budget.when_exhausted == "throttle":
        action = f"throttle to {_number(budget.throttle_to_percent)}%"
    return f"{_number(budget.gpu_hours)} GPU-hours {period}, {warning}, then {action}{held}"


def _number(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))
