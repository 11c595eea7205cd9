"""The ``sbc`` command line.

``sbc run -c FILE``, ``sbc check-config FILE``, ``sbc check-rules [FILE...] [-c CONFIG]``,
``sbc certs init|client`` and ``sbc version``.
:func:`main` returns the exit status instead of exiting, so tests call it in-process; the console
script (``sbc = sbc.app.cli:main``) passes it to ``sys.exit``.

Exit statuses: 0 success; 1 a check or a command failed (invalid configuration for
``check-config``, invalid rules for ``check-rules``, files in the way for ``certs``); 2 usage
errors and an invalid configuration for ``run`` (or for ``check-rules -c``); whatever
``sbc.app.service.run`` returns otherwise.  Operator mistakes never print a traceback.  Twisted
(and its reactor) is imported only by the commands that need it.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import sbc
from sbc.app import certs
from sbc.config import Config, ConfigError, ConfigErrors, format_hostport, load_config
from sbc.config.model import LOG_FORMATS, LOG_LEVELS

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbc", description="SIP security gateway / session border controller"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the SBC in the foreground")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="configuration file")
    run.add_argument("--log-format", choices=LOG_FORMATS, help="override logging.format")
    run.add_argument("--log-level", choices=LOG_LEVELS, help="override logging.level")
    run.add_argument(
        "--init-dev-certs",
        metavar="DIR",
        help="first create development certificates in DIR if it has no server.crt",
    )

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", metavar="FILE")

    rules = commands.add_parser(
        "check-rules", help="validate rule files (default: the configuration's rules.files)"
    )
    rules.add_argument("files", nargs="*", metavar="FILE",
                       help="rule files, or directories of *.yaml rule files")
    rules.add_argument(
        "-c", "--config", metavar="FILE", help="take the rule files from this configuration"
    )

    certs_cmd = commands.add_parser("certs", help="development certificates")
    certs_sub = certs_cmd.add_subparsers(dest="certs_command", metavar="ACTION")
    init = certs_sub.add_parser("init", help="create a development CA and a server certificate")
    client = certs_sub.add_parser("client", help="issue a client certificate from the dev CA")
    client.add_argument("name", metavar="NAME", help="CN and SAN of the client (e.g. trunk-a)")
    for sub in (init, client):
        sub.add_argument("--dir", default=certs.DEFAULT_DIR, help="directory (default: certs)")
        sub.add_argument("--force", action="store_true", help="overwrite existing files")
        sub.add_argument(
            "--days",
            type=_positive_int,
            default=certs.DEFAULT_SERVER_DAYS,
            help=f"validity in days (default: {certs.DEFAULT_SERVER_DAYS})",
        )
    init.add_argument(
        "--hostname",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP address for the server certificate (repeatable)",
    )

    commands.add_parser("version", help="show versions")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "run":
        return cmd_run(args)
    if args.command == "check-config":
        return cmd_check_config(args.file)
    if args.command == "check-rules":
        return cmd_check_rules(args.files, args.config)
    if args.command == "certs":
        if args.certs_command == "init":
            return cmd_certs_init(args)
        if args.certs_command == "client":
            return cmd_certs_client(args)
        print("usage: sbc certs {init,client} ... (see sbc certs --help)", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "version":
        return cmd_version()
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _err(message: str) -> None:
    print(f"sbc: {message}", file=sys.stderr)


def _print_config_errors(source: str, error: ConfigError) -> None:
    errors = error.errors if isinstance(error, ConfigErrors) else (error,)
    for each in errors:
        print(each, file=sys.stderr)
    print(f"{source}: {len(errors)} error(s)", file=sys.stderr)


def summary(config: Config) -> list[str]:
    """A few lines describing what a configuration will do (for ``check-config``)."""
    lines = []
    for listener in config.listeners():
        iface = getattr(config.interfaces, listener.interface)
        note = f" (advertised as {iface.advertised_address})" if iface.advertised_address else ""
        lines.append(f"listen  {listener}{note}")
    pbx = config.pbx
    verify = "" if pbx.transport != "tls" else (" verified" if pbx.tls_verify else " UNVERIFIED")
    lines.append(f"pbx     {pbx.transport} {format_hostport(pbx.address, pbx.port)}{verify}")
    state = config.state
    lines.append(
        "state   memory" if state.backend == "memory" else f"state   redis {state.redis_url_masked}"
    )
    media = config.media
    lines.append(
        f"media   ports {media.port_range.start}-{media.port_range.end}, srtp {media.srtp}"
    )
    lines.append(f"peers   {len(config.trusted_peers)} trusted")
    lines.append(f"rules   {len(config.rules.paths())} file(s)")
    admin = config.admin
    lines.append(
        f"admin   http {format_hostport(admin.address, admin.port)}"
        if admin.enabled
        else "admin   disabled"
    )
    return lines


def cmd_check_config(file: str) -> int:
    try:
        config = load_config(file)
    except ConfigError as exc:
        _print_config_errors(file, exc)
        return EXIT_FAILED
    except Exception as exc:  # a bug in a check must still not look like a crash to operators
        _err(f"{file}: internal error while checking ({type(exc).__name__}: {exc})")
        return EXIT_FAILED
    print(f"{file}: OK")
    for line in summary(config):
        print(f"  {line}")
    return EXIT_OK


def cmd_check_rules(files: Sequence[str], config_file: str | None) -> int:
    """Validate rule files: each error as ``file:line:col: message (expected ...)`` on stderr and
    exit 1 (like check-config), or a one-line summary on stdout and exit 0."""
    from sbc.policy.loader import load_rules

    paths: list[str] = []
    for name in files:  # a directory stands for its *.yaml files, in name order
        path = Path(name)
        paths.extend(sorted(str(p) for p in path.glob("*.yaml")) if path.is_dir() else [name])
    if files and not paths:
        _err(f"check-rules: no *.yaml rule files in {' '.join(files)}")
        return EXIT_FAILED
    if not paths:
        if config_file is None:
            _err("check-rules: give rule files, or -c CONFIG to check its rules.files")
            return EXIT_USAGE
        try:
            config = load_config(config_file)
        except ConfigError as exc:
            _print_config_errors(config_file, exc)
            return EXIT_USAGE
        paths = [str(path) for path in config.rules.paths()]
    try:
        ruleset = load_rules(paths)
    except ConfigError as exc:
        errors = exc.errors if isinstance(exc, ConfigErrors) else (exc,)
        for each in errors:
            print(each, file=sys.stderr)
        print(f"check-rules: {len(errors)} error(s)", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug in a check must still not look like a crash to operators
        _err(f"check-rules: internal error while checking ({type(exc).__name__}: {exc})")
        return EXIT_FAILED
    print(f"OK: {ruleset.summary()}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    if args.init_dev_certs:
        try:
            created = certs.ensure_dev_certs(args.init_dev_certs)
        except (certs.CertsError, OSError) as exc:
            _err(f"cannot create development certificates: {exc}")
            return EXIT_FAILED
        if created is not None:
            _err(f"created development certificates in {args.init_dev_certs}")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_config_errors(args.config, exc)
        return EXIT_USAGE
    from sbc.app.logging import setup_logging

    setup_logging(args.log_format or config.logging.format, args.log_level or config.logging.level)
    try:
        service = importlib.import_module("sbc.app.service")
    except ModuleNotFoundError as exc:
        if exc.name != "sbc.app.service":
            raise
        _err("this build has no service to run (sbc.app.service is missing)")
        return EXIT_FAILED
    try:
        return int(service.run(config))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def cmd_certs_init(args: argparse.Namespace) -> int:
    try:
        paths = certs.init_dev_certs(
            args.dir, force=args.force, days=args.days, hostnames=args.hostname
        )
    except (certs.CertsError, OSError) as exc:
        _err(str(exc))
        return EXIT_FAILED
    for path in (paths.ca_certificate, paths.ca_private_key, paths.certificate, paths.private_key):
        print(f"wrote {path}")
    return EXIT_OK


def cmd_certs_client(args: argparse.Namespace) -> int:
    try:
        cert_path, key_path = certs.issue_client_files(
            args.dir, args.name, force=args.force, days=args.days
        )
    except (certs.CertsError, OSError, ValueError) as exc:
        _err(str(exc))
        return EXIT_FAILED
    print(f"wrote {cert_path}")
    print(f"wrote {key_path}")
    return EXIT_OK


def versions() -> list[str]:
    """``sbc X`` then the versions of the runtime and of the libraries that matter."""
    lines = [f"sbc {sbc.__version__}", f"Python {platform.python_version()}"]
    try:
        import twisted

        lines.append(f"Twisted {twisted.__version__}")
    except ImportError:  # pragma: no cover -- a dependency
        pass
    try:
        from OpenSSL import SSL
        from OpenSSL import __version__ as pyopenssl_version

        openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")
        lines.append(f"{openssl} (pyOpenSSL {pyopenssl_version})")
    except ImportError:  # pragma: no cover
        pass
    try:
        import pylibsrtp

        lines.append(f"libsrtp via pylibsrtp {pylibsrtp.__version__}{_libsrtp_version(pylibsrtp)}")
    except ImportError:  # pragma: no cover
        pass
    return lines


def _libsrtp_version(module: object) -> str:
    lib = getattr(module, "lib", None)
    ffi = getattr(module, "ffi", None)
    get = getattr(lib, "srtp_get_version_string", None)
    if get is None or ffi is None:
        return ""
    try:
        return f" (libsrtp {ffi.string(get()).decode('ascii', 'replace')})"
    except Exception:  # pragma: no cover -- version is informative only
        return ""


def cmd_version() -> int:
    for line in versions():
        print(line)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
