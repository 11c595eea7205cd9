"""The sbc command line, called in-process through main() and once as the real console script."""

from __future__ import annotations

import io
import json
import platform
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import twisted.logger
from twisted.logger import LogBeginner, Logger, LogPublisher

import sbc
from sbc.app import certs
from sbc.app.cli import main
from sbc.config import Config

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "config"
SBC_SCRIPT = Path(sys.executable).with_name("sbc")


@pytest.fixture(scope="module")
def cert_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("devcerts")
    certs.init_dev_certs(directory)
    return directory


@pytest.fixture
def minimal(tmp_path: Path, cert_source: Path) -> Path:
    """The minimal fixture config with its certificates beside it."""
    shutil.copytree(cert_source, tmp_path / "certs")
    return Path(shutil.copy(FIXTURES / "minimal.yaml", tmp_path / "sbc.yaml"))


@pytest.fixture
def many_errors(tmp_path: Path, cert_source: Path) -> Path:
    shutil.copytree(cert_source, tmp_path / "certs")
    return Path(shutil.copy(FIXTURES / "many-errors.yaml", tmp_path / "bad.yaml"))


class FakeService:
    """Stands in for sbc.app.service (the lead's module) and records the config it gets."""

    def __init__(self, status: int = 0, raises: type[BaseException] | None = None) -> None:
        self.configs: list[Config] = []
        self.publisher = LogPublisher()  # what the service logs to (the global one in real life)
        self.status = status
        self.raises = raises

    def run(self, config: Config) -> int:
        self.configs.append(config)
        Logger(namespace="sbc.fake", observer=self.publisher).info(
            "service running {password}", password="hunter2"
        )
        if self.raises is not None:
            raise self.raises()
        return self.status


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> FakeService:
    """A fake sbc.app.service, and a private Twisted log beginner so no global state leaks."""
    fake = FakeService()
    module = types.ModuleType("sbc.app.service")
    module.run = fake.run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sbc.app.service", module)
    stdio = types.SimpleNamespace(stdout=sys.stdout, stderr=sys.stderr)
    warnings = types.SimpleNamespace(showwarning=None)
    beginner = LogBeginner(fake.publisher, io.StringIO(), stdio, warnings)
    monkeypatch.setattr(twisted.logger, "globalLogBeginner", beginner)
    return fake


# -- check-config --------------------------------------------------------------------------------


def test_check_config_ok_prints_a_summary(
    minimal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid file prints FILE: OK and a summary of listeners, PBX and state, exit 0."""
    assert main(["check-config", str(minimal)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{minimal}: OK",
        "  listen  external tls 127.0.0.1:5061",
        "  listen  internal udp 127.0.0.1:5080",
        "  pbx     udp 127.0.0.1:5060",
        "  state   memory",
        "  media   ports 20000-29999, srtp require",
        "  peers   0 trusted",
        "  rules   0 file(s)",
        "  admin   disabled",
    ]
    assert err == ""


def test_check_config_summary_masks_the_redis_password(
    minimal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary shows the Redis URL with its password masked."""
    with minimal.open("a") as f:
        f.write("state: {backend: redis, redis_url: 'redis://:hunter2@cache:6379/0'}\n")
    assert main(["check-config", str(minimal)]) == 0
    out = capsys.readouterr().out
    assert "  state   redis redis://:***@cache:6379/0" in out.splitlines()
    assert "hunter2" not in out


def test_check_config_reports_every_error(
    many_errors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid file prints each error as file:line:col: path: message, exit 1."""
    assert main(["check-config", str(many_errors)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    f = str(many_errors)
    assert err.splitlines() == [
        f"{f}:3:7: node.id: invalid value \"not a name\" (expected a name of letters, digits, '.', "
        "'_' and '-' (at most 64 characters))",
        f"{f}:7:7: interfaces.external.tls.prot: unknown key 'prot', did you mean 'port'? "
        "(expected one of: enabled, port)",
        f"{f}:9:16: limits.max_headers: got a boolean (yes) (expected an integer in 1..10000)",
        f"{f}:11:9: pbx.port: 99999 is out of range (expected a port in 1..65535)",
        f'{f}:13:9: media.srtp: invalid value "sometimes" (expected one of: require, optional, '
        "none)",
        f"{f}:16:14: state.redis_url: unsupported scheme 'ftp' in \"ftp://user:***@cache\" "
        "(expected a redis://, rediss://, unix://, redis+sentinel://host[,host...]/service or "
        "redis+cluster://host[,host...] URL)",
        f"{f}: 6 error(s)",
    ]


@pytest.mark.parametrize(
    ("kind", "first_line"),
    [
        ("missing", "{f}: cannot read the configuration file (No such file or directory)"),
        ("directory", "{f}: is a directory, not a configuration file"),
        ("binary", "{f}:1:1: the file is not UTF-8 text (byte 0x89) (expected a UTF-8 YAML file)"),
        ("empty", "{f}:1:1: the configuration is empty (expected a mapping of configuration "
         "sections)"),
    ],
)  # fmt: skip
def test_check_config_never_prints_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, first_line: str
) -> None:
    """Unreadable, directory, binary and empty files are one-line errors with exit 1."""
    path = tmp_path / "sbc.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    elif kind == "empty":
        path.write_bytes(b"")
    assert main(["check-config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err.splitlines()[0] == first_line.format(f=path)


def test_check_config_does_not_import_the_reactor(minimal: Path) -> None:
    """check-config runs without importing Twisted's reactor (or the service module)."""
    code = (
        "import sys; from sbc.app.cli import main; rc = main(['check-config', sys.argv[1]]); "
        "print(rc, 'twisted.internet.reactor' in sys.modules, 'sbc.app.service' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(minimal)], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines()[-1] == "0 False False"


def test_console_script_exit_status_and_output(many_errors: Path) -> None:
    """The installed sbc script exits 1 on an invalid file, printing errors without a traceback."""
    result = subprocess.run(
        [str(SBC_SCRIPT), "check-config", str(many_errors)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == f"{many_errors}: 6 error(s)"
    assert "Traceback" not in result.stderr


# -- run -------------------------------------------------------------------------------------------


def test_run_with_bad_config_exits_2(
    many_errors: Path, service: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    """sbc run with an invalid file prints the errors and exits 2 without starting the service."""
    assert main(["run", "-c", str(many_errors)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"{many_errors}: 6 error(s)"
    assert "Traceback" not in err
    assert service.configs == []


def test_run_creates_dev_certs_then_runs_the_service(
    tmp_path: Path, service: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    """--init-dev-certs creates missing certificates before the config that needs them is loaded."""
    config_path = Path(shutil.copy(FIXTURES / "minimal.yaml", tmp_path / "sbc.yaml"))
    service.status = 7
    rc = main(["run", "-c", str(config_path), "--init-dev-certs", str(tmp_path / "certs"),
               "--log-format", "json"])  # fmt: skip
    assert rc == 7
    [config] = service.configs
    assert config.tls.certificate == tmp_path / "certs" / "server.crt"
    assert (tmp_path / "certs" / "dev-ca.crt").exists()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"sbc: created development certificates in {tmp_path / 'certs'}"
    record = json.loads(err[-1])
    assert (record["namespace"], record["message"]) == ("sbc.fake", "service running ***")


def test_run_keeps_existing_dev_certs(
    minimal: Path, service: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    """--init-dev-certs leaves a directory that already has server.crt alone."""
    before = (minimal.parent / "certs" / "server.key").read_bytes()
    rc = main(["run", "-c", str(minimal), "--init-dev-certs", str(minimal.parent / "certs")])
    assert rc == 0
    assert (minimal.parent / "certs" / "server.key").read_bytes() == before
    assert "created development certificates" not in capsys.readouterr().err


def test_run_logs_text_by_default(
    minimal: Path, service: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --log-format the config's format (text) is used, redacted."""
    assert main(["run", "-c", str(minimal)]) == 0
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.endswith(" info  [sbc.fake] service running ***")


def test_run_interrupted_exits_130(minimal: Path, service: FakeService) -> None:
    """Ctrl-C during the service gives exit status 130 and no traceback."""
    service.raises = KeyboardInterrupt
    assert main(["run", "-c", str(minimal)]) == 130


def test_run_requires_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    """sbc run without -c is a usage error (exit 2)."""
    assert main(["run"]) == 2
    assert "the following arguments are required: -c/--config" in capsys.readouterr().err


# -- certs -----------------------------------------------------------------------------------------


def test_certs_init_writes_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """certs init writes four files; a second run fails with exit 1 unless --force is given."""
    directory = tmp_path / "c"
    assert main(["certs", "init", "--dir", str(directory), "--hostname", "sbc.test"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {directory / name}" for name in ("dev-ca.crt", "dev-ca.key", "server.crt",
                                                  "server.key")
    ]  # fmt: skip
    key = (directory / "server.key").read_bytes()
    assert main(["certs", "init", "--dir", str(directory)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sbc: refusing to overwrite existing file(s): ")
    assert err.rstrip().endswith("(use --force)")
    assert (directory / "server.key").read_bytes() == key
    assert main(["certs", "init", "--dir", str(directory), "--force", "--days", "30"]) == 0
    assert (directory / "server.key").read_bytes() != key


def test_certs_init_rejects_a_bad_hostname(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid --hostname is an error (exit 1) and nothing is written."""
    assert main(["certs", "init", "--dir", str(tmp_path / "c"), "--hostname", "a b"]) == 1
    assert capsys.readouterr().err == "sbc: not a valid host name or IP address: 'a b'\n"
    assert not (tmp_path / "c").exists()


def test_certs_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """certs client issues NAME.crt/NAME.key from the dev CA (key mode 0600)."""
    assert main(["certs", "init", "--dir", str(tmp_path)]) == 0
    assert main(["certs", "client", "trunk-a", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"wrote {tmp_path / 'trunk-a.crt'}",
        f"wrote {tmp_path / 'trunk-a.key'}",
    ]
    assert (tmp_path / "trunk-a.key").stat().st_mode & 0o777 == 0o600


# -- version and usage -------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """sbc version prints sbc's version first, then Python, Twisted, OpenSSL and libsrtp."""
    assert main(["version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"sbc {sbc.__version__}" == "sbc 0.1.0"
    assert lines[1] == f"Python {platform.python_version()}"
    assert lines[2] == f"Twisted {twisted.__version__}"
    assert lines[3].startswith("OpenSSL ")
    assert lines[4].startswith("libsrtp via pylibsrtp ")


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """sbc without a command prints the help to stderr and exits 2."""
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("usage: sbc ")


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """sbc --help is a success."""
    assert main(["--help"]) == 0
    assert "check-config" in capsys.readouterr().out


def test_run_without_a_service_module(
    minimal: Path,
    service: FakeService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """When sbc.app.service cannot be imported, run says so and exits 1 without a traceback."""
    monkeypatch.setitem(sys.modules, "sbc.app.service", None)  # makes the import fail
    assert main(["run", "-c", str(minimal)]) == 1
    err = capsys.readouterr().err
    assert "sbc: this build has no service to run (sbc.app.service is missing)" in err
    assert service.configs == []


# -- check-rules ---------------------------------------------------------------------------------

GOOD_RULES = """\
lists:
  premium: {kind: prefixes, items: ["+1900"]}
rules:
  - {id: scanner, on: request, match: {user_agent: sipvicious}, actions: [drop]}
  - id: premium
    on: call_start
    mode: observe
    match: {destination_prefix: {list: premium}}
    actions: [reject]
"""


def test_check_rules_ok_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Valid rule files print a one-line summary (rules, files, observe count), exit 0."""
    a = tmp_path / "a.yaml"
    a.write_text(GOOD_RULES)
    b = tmp_path / "b.yaml"
    b.write_text("rules:\n  - {id: other, on: connection, actions: [drop]}\n")
    assert main(["check-rules", str(a), str(b)]) == 0
    out, err = capsys.readouterr()
    assert out == "OK: 3 rules in 2 files (1 observe), 1 list, 0 feeds\n"
    assert err == ""


def test_check_rules_takes_a_directory_of_yaml_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory stands for its *.yaml files; one without any is an error (exit 1)."""
    (tmp_path / "a.yaml").write_text(GOOD_RULES)
    (tmp_path / "b.yaml").write_text("rules:\n  - {id: other, on: connection, actions: [drop]}\n")
    (tmp_path / "notes.txt").write_text("not a rule file")
    assert main(["check-rules", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "OK: 3 rules in 2 files (1 observe), 1 list, 0 feeds\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["check-rules", str(empty)]) == 1
    assert "no *.yaml rule files" in capsys.readouterr().err


def test_check_rules_reports_every_error_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Invalid rule files print each error as file:line:col: message (expected ...), exit 1."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {id: a, on: request, actions: [bann]}\n"
                   "  - {id: a, on: request, actions: [drop], count: {key: ip}}\n")
    missing = tmp_path / "missing.yaml"
    assert main(["check-rules", str(bad), str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{bad}:2:36: rules[0].actions[0]: unknown action 'bann', did you mean 'ban'? (expected "
        "an action: allow, reject, drop, tarpit, ban, end_calls, lock_account, alert)",
        f"{bad}:3:10: rules[1].id: duplicate rule id 'a' (first defined at {bad}:2:10) "
        "(expected a rule id unique across all rule files)",
        f"{bad}:3:43: rules[1].count.algorithm: missing required key 'algorithm' (expected one "
        "of: fixed_window, sliding_window, token_bucket, concurrent, daily, "
        "sequential_same_destination, duration)",
        f"{bad}:3:56: rules[1].count.key: invalid value \"ip\" (expected one of: source_ip, "
        "source_net24, username, account, trunk, destination_prefix, destination, global)",
        f"{missing}:1:1: cannot read the file (No such file or directory) (expected a rule file)",
        "check-rules: 5 error(s)",
    ]


def test_check_rules_takes_the_files_of_the_configuration(
    minimal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without files, -c CONFIG checks the configuration's rules.files (globs expanded)."""
    rules_dir = minimal.parent / "rules"
    rules_dir.mkdir()
    (rules_dir / "10-good.yaml").write_text(GOOD_RULES)
    (rules_dir / "20-more.yaml").write_text("rules:\n  - {id: x, on: malformed, actions: [drop]}\n")
    with minimal.open("a") as f:
        f.write(f"rules: {{files: ['{rules_dir}/*.yaml']}}\n")
    assert main(["check-rules", "-c", str(minimal)]) == 0
    assert capsys.readouterr().out == "OK: 3 rules in 2 files (1 observe), 1 list, 0 feeds\n"


def test_check_rules_with_a_bad_configuration_exits_2(
    many_errors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-rules -c with an invalid configuration prints its errors and exits 2."""
    assert main(["check-rules", "-c", str(many_errors)]) == 2
    err = capsys.readouterr().err
    assert f"{many_errors}:3:7: node.id: invalid value" in err


def test_check_rules_needs_files_or_a_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    """check-rules without files and without -c is a usage error (exit 2)."""
    assert main(["check-rules"]) == 2
    assert capsys.readouterr().err == (
        "sbc: check-rules: give rule files, or -c CONFIG to check its rules.files\n")


def test_check_rules_does_not_import_the_reactor(tmp_path: Path) -> None:
    """check-rules runs without importing Twisted's reactor."""
    rules = tmp_path / "r.yaml"
    rules.write_text(GOOD_RULES)
    code = (
        "import sys; from sbc.app.cli import main; rc = main(['check-rules', sys.argv[1]]); "
        "assert 'twisted.internet.reactor' not in sys.modules; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(rules)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 2 rules in 1 file")
