"""GeoIP refresh (geoblock-geoip-update) against a local update server on 127.0.0.1.

The tool runs as a real subprocess (`python -m geoblock.tools.geoipupdate`), configured the way operators do
it (GEOIPUPDATE_* variables, GeoIP.conf). Every case checks the exit code, the message, and the bytes of
the database left in the directory.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geoblock.tools import geoipupdate
from support import sandbox
from support.geodb import write_asn_db, write_country_db
from support.maxmind_server import UpdateServer

REPO = Path(__file__).resolve().parents[1]
ACCOUNT, KEY = 424242, "test-licence-key"
COUNTRY, ASN = "GeoLite2-Country", "GeoLite2-ASN"
DAY = 86400
NOW = int(time.time())
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


# --- helpers ---------------------------------------------------------------------------------------


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def day(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GEOIPUPDATE_") and k.lower() not in PROXY_VARS and k != "GEOBLOCK_DBIP_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "addons"), env.get("PYTHONPATH")]))
    env["GEOIPUPDATE_CONF_FILE"] = os.devnull  # an empty GeoIP.conf: one on the test machine plays no part
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoblock.tools.geoipupdate", *args], env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)


def leftovers(directory: Path) -> list[str]:
    """Anything in the directory besides databases and the lock file (e.g. a staging directory)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".mmdb") and p.name != ".geoipupdate.lock")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- fixtures --------------------------------------------------------------------------------------


class Builds:
    """Real test databases (bytes): an old and a new build of each edition, and DB-IP-style files."""

    def __init__(self, d: Path) -> None:
        self.country_old = write_country_db(d / "c-old.mmdb", build_epoch=NOW - 10 * DAY).read_bytes()
        self.country_new = write_country_db(d / "c-new.mmdb", build_epoch=NOW - 1 * DAY).read_bytes()
        self.asn_old = write_asn_db(d / "a-old.mmdb", build_epoch=NOW - 10 * DAY).read_bytes()
        self.asn_new = write_asn_db(d / "a-new.mmdb", build_epoch=NOW - 1 * DAY).read_bytes()
        self.city = write_country_db(d / "city.mmdb", edition="GeoLite2-City").read_bytes()
        self.country_stale = write_country_db(d / "c-stale.mmdb", build_epoch=NOW - 30 * DAY).read_bytes()

    def dbip(self, d: Path, kind: str, epoch: int) -> bytes:
        path = d / f"dbip-{kind}-{epoch}.mmdb"
        if kind == "country":
            return write_country_db(path, edition="DBIP-Country-Lite", build_epoch=epoch).read_bytes()
        return write_asn_db(path, edition="DBIP-ASN-Lite (compat=GeoLite2-ASN)", build_epoch=epoch).read_bytes()


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(tmp_path_factory.mktemp("builds"))


@pytest.fixture
def server(builds: Builds) -> Iterator[UpdateServer]:
    with UpdateServer(ACCOUNT, KEY) as srv:
        srv.publish(COUNTRY, builds.country_new, day(NOW - DAY))
        srv.publish(ASN, builds.asn_new, day(NOW - DAY))
        yield srv


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """An explicit (empty) GeoIP.conf, so a GeoIP.conf on the test machine plays no part."""
    path = tmp_path / "GeoIP.conf"
    path.write_text("# credentials come from GEOIPUPDATE_* in these tests\n")
    return path


@pytest.fixture
def db_dir(tmp_path: Path) -> Path:
    return tmp_path / "geoip"


@pytest.fixture
def installed(db_dir: Path, builds: Builds) -> Path:
    """The old builds, installed."""
    db_dir.mkdir(parents=True, exist_ok=True)
    (db_dir / f"{COUNTRY}.mmdb").write_bytes(builds.country_old)
    (db_dir / f"{ASN}.mmdb").write_bytes(builds.asn_old)
    return db_dir


def mm_env(server: UpdateServer, **extra: str) -> dict[str, str]:
    values = {"GEOIPUPDATE_HOST": server.url, "GEOIPUPDATE_ACCOUNT_ID": str(ACCOUNT),
              "GEOIPUPDATE_LICENSE_KEY": KEY}
    values.update(extra)
    return clean_env(**values)


def update(server: UpdateServer, conf: Path, db_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run("--config", str(conf), "--directory", str(db_dir), *args, env=mm_env(server, **env))


def assert_unchanged(db_dir: Path, builds: Builds) -> None:
    assert (db_dir / f"{COUNTRY}.mmdb").read_bytes() == builds.country_old
    assert (db_dir / f"{ASN}.mmdb").read_bytes() == builds.asn_old


# --- MaxMind: success ------------------------------------------------------------------------------


def test_first_download(server: UpdateServer, conf: Path, db_dir: Path, builds: Builds) -> None:
    result = update(server, conf, db_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{COUNTRY}: updated to build {day(NOW - DAY)}",
                                          f"{ASN}: updated to build {day(NOW - DAY)}"]
    assert result.stderr == ""
    assert (db_dir / f"{COUNTRY}.mmdb").read_bytes() == builds.country_new
    assert (db_dir / f"{ASN}.mmdb").read_bytes() == builds.asn_new
    assert server.hits["download"] == 2
    assert leftovers(db_dir) == []


def test_already_current_downloads_nothing(server: UpdateServer, conf: Path, db_dir: Path, builds: Builds) -> None:
    db_dir.mkdir()
    (db_dir / f"{COUNTRY}.mmdb").write_bytes(builds.country_new)
    (db_dir / f"{ASN}.mmdb").write_bytes(builds.asn_new)
    inode = (db_dir / f"{COUNTRY}.mmdb").stat().st_ino
    result = update(server, conf, db_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{COUNTRY}: already current (build {day(NOW - DAY)})",
                                          f"{ASN}: already current (build {day(NOW - DAY)})"]
    assert server.hits["metadata"] == 2 and server.hits["download"] == 0
    assert (db_dir / f"{COUNTRY}.mmdb").stat().st_ino == inode  # not even rewritten
    assert leftovers(db_dir) == []


def test_new_build_replaces_old(server: UpdateServer, conf: Path, installed: Path, builds: Builds) -> None:
    old_inode = (installed / f"{COUNTRY}.mmdb").stat().st_ino
    result = update(server, conf, installed)
    assert result.returncode == 0, result.stderr
    assert f"{COUNTRY}: updated to build {day(NOW - DAY)}" in result.stdout
    assert (installed / f"{COUNTRY}.mmdb").read_bytes() == builds.country_new
    assert (installed / f"{ASN}.mmdb").read_bytes() == builds.asn_new
    assert (installed / f"{COUNTRY}.mmdb").stat().st_ino != old_inode  # a new file renamed in place
    assert leftovers(installed) == []


def test_only_the_changed_edition_is_downloaded(server: UpdateServer, conf: Path, db_dir: Path,
                                                builds: Builds) -> None:
    db_dir.mkdir()
    (db_dir / f"{COUNTRY}.mmdb").write_bytes(builds.country_old)
    (db_dir / f"{ASN}.mmdb").write_bytes(builds.asn_new)
    result = update(server, conf, db_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{COUNTRY}: updated to build {day(NOW - DAY)}",
                                          f"{ASN}: already current (build {day(NOW - DAY)})"]
    assert server.hits["download"] == 1


def test_configuration_from_geoip_conf(server: UpdateServer, tmp_path: Path, builds: Builds) -> None:
    """Everything in GeoIP.conf, nothing in the environment: a City edition into the file's directory."""
    target = tmp_path / "from-conf"
    conf = tmp_path / "GeoIP.conf"
    conf.write_text(f"AccountID {ACCOUNT}\nLicenseKey {KEY}\nEditionIDs GeoLite2-City\n"
                    f"DatabaseDirectory {target}\nHost {server.url}\n")
    server.publish("GeoLite2-City", builds.city, day(NOW))
    result = run("--config", str(conf))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("GeoLite2-City: updated to build ")
    assert (target / "GeoLite2-City.mmdb").read_bytes() == builds.city
    assert sorted(p.name for p in target.iterdir()) == [".geoipupdate.lock", "GeoLite2-City.mmdb"]


def test_environment_overrides_the_file(server: UpdateServer, tmp_path: Path, db_dir: Path) -> None:
    conf = tmp_path / "GeoIP.conf"
    conf.write_text(f"AccountID {ACCOUNT}\nLicenseKey wrong-key\nEditionIDs {COUNTRY}\n")
    result = run("--config", str(conf), "--directory", str(db_dir),
                 env=mm_env(server, GEOIPUPDATE_CONF_FILE="/nonexistent"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{COUNTRY}: updated to build {day(NOW - DAY)}"]


def test_stale_staging_directory_is_removed(server: UpdateServer, conf: Path, installed: Path) -> None:
    left = installed / f"{geoipupdate.STAGING_PREFIX}killed"
    left.mkdir()
    (left / f"{COUNTRY}.mmdb").write_bytes(b"half")
    result = update(server, conf, installed)
    assert result.returncode == 0, result.stderr
    assert leftovers(installed) == []


# --- MaxMind: failures leave the old database ------------------------------------------------------


@pytest.mark.parametrize("failure, code, words", [
    ("429", 5, ["HTTP 429", "30 downloads a day"]),
    ("bad-md5", 7, ["does not match the MD5"]),
    ("corrupt", 9, ["corrupt download", "Not a gzipped file"]),
    ("truncated", 9, ["corrupt download"]),
    ("500", 1, ["HTTP 500"]),
    ("hang", 6, ["cannot reach", "in time"]),
])
def test_server_failure_keeps_old_database(server: UpdateServer, conf: Path, installed: Path, builds: Builds,
                                           failure: str, code: int, words: list[str]) -> None:
    server.failure = failure
    started = time.monotonic()
    result = update(server, conf, installed, "--timeout", "2")
    assert result.returncode == code, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith(f"geoblock-geoip-update: {COUNTRY}: ")
    assert line.endswith(f"({COUNTRY} unchanged)")
    for word in words:
        assert word in line
    assert result.stdout == ""
    assert_unchanged(installed, builds)
    assert leftovers(installed) == []
    assert server.hits["download"] == 1  # no retry unless RetryFor says so
    assert time.monotonic() - started < 20


def test_archive_holding_no_database(server: UpdateServer, conf: Path, installed: Path, builds: Builds) -> None:
    """The MD5 matches (pygeoipupdate accepts it) but the file is not a MaxMind DB."""
    server.publish(COUNTRY, b"<html>this is not a database</html>\n" * 20, day(NOW))
    result = update(server, conf, installed)
    assert result.returncode == 9, result.stderr
    assert f"the downloaded {COUNTRY}.mmdb is not a usable database" in result.stderr
    assert_unchanged(installed, builds)
    assert leftovers(installed) == []


def test_archive_holding_the_wrong_edition(server: UpdateServer, conf: Path, installed: Path,
                                           builds: Builds) -> None:
    server.publish(COUNTRY, builds.city, day(NOW))
    result = update(server, conf, installed)
    assert result.returncode == 9, result.stderr
    assert f"is a GeoLite2-City database, not {COUNTRY}" in result.stderr
    assert_unchanged(installed, builds)


def test_wrong_credentials(server: UpdateServer, conf: Path, installed: Path, builds: Builds) -> None:
    result = update(server, conf, installed, GEOIPUPDATE_LICENSE_KEY="not-the-key")
    assert result.returncode == 4, result.stderr
    assert "HTTP 401" in result.stderr and "AccountID and LicenseKey" in result.stderr
    assert server.hits["unauthorised"] == 1 and server.hits["download"] == 0
    assert_unchanged(installed, builds)


@pytest.mark.parametrize("env, words", [
    ({}, "AccountID and LicenseKey not set"),
    ({"GEOIPUPDATE_ACCOUNT_ID": str(ACCOUNT)}, "LicenseKey not set"),
])
def test_no_credentials(conf: Path, installed: Path, builds: Builds, env: dict[str, str], words: str) -> None:
    result = run("--config", str(conf), "--directory", str(installed), env=clean_env(**env))
    assert result.returncode == 3, result.stderr
    assert words in result.stderr and "--source dbip" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert_unchanged(installed, builds)


def unit_credential() -> tuple[str, str]:
    """deploy/systemd/geoblock-geoip-update.service's licence key: the credential's name (LoadCredential=)
    and the GEOIPUPDATE_LICENSE_KEY_FILE value it sets, with %d (systemd's $CREDENTIALS_DIRECTORY) in it."""
    text = (REPO / "deploy" / "systemd" / "geoblock-geoip-update.service").read_text().splitlines()
    loads = [line.split("=", 1)[1].split(":", 1)[0] for line in text if line.startswith("LoadCredential=")]
    files = [line.split("=", 2)[2] for line in text if line.startswith("Environment=GEOIPUPDATE_LICENSE_KEY_FILE=")]
    assert len(loads) == 1 and len(files) == 1, (loads, files)
    return loads[0], files[0]


def test_licence_key_from_the_units_credential(server: UpdateServer, conf: Path, installed: Path, builds: Builds,
                                               tmp_path: Path) -> None:
    """The unit's way: the key in a file in $CREDENTIALS_DIRECTORY (as systemd's LoadCredential= leaves
    it, with a final newline), none in the environment."""
    name, key_file = unit_credential()
    assert key_file == f"%d/{name}"
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / name).write_text(KEY + "\n")
    env = clean_env(GEOIPUPDATE_HOST=server.url, GEOIPUPDATE_ACCOUNT_ID=str(ACCOUNT),
                    CREDENTIALS_DIRECTORY=str(credentials),
                    GEOIPUPDATE_LICENSE_KEY_FILE=key_file.replace("%d", str(credentials)))
    result = run("--config", str(conf), "--directory", str(installed), env=env)
    assert result.returncode == 0, result.stderr
    assert (installed / f"{COUNTRY}.mmdb").read_bytes() == builds.country_new
    assert KEY not in result.stdout + result.stderr
    # an empty credential file: no credentials, named
    (credentials / name).write_text("")
    installed_again = tmp_path / "again"
    installed_again.mkdir()
    result = run("--config", str(conf), "--directory", str(installed_again), env=env)
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip() == (f"geoblock-geoip-update: no MaxMind licence key: {credentials / name} "
                                     "(GEOIPUPDATE_LICENSE_KEY_FILE) is empty (databases unchanged)")
    # no credential file at all (LoadCredential= not set up): a configuration error naming the file
    (credentials / name).unlink()
    result = run("--config", str(conf), "--directory", str(installed), env=env)
    assert result.returncode == 2, result.stderr
    assert str(credentials / name) in result.stderr and "GEOIPUPDATE_LICENSE_KEY_FILE" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_update_under_the_units_system_call_filter(server: UpdateServer, conf: Path, installed: Path,
                                                   builds: Builds, tmp_path: Path) -> None:
    """A real update under geoblock-geoip-update.service's SystemCallFilter= and RestrictAddressFamilies=
    (applied with libseccomp as systemd applies them: support.sandbox), the key from its credential."""
    if reason := sandbox.unavailable():
        pytest.skip(reason)
    name, key_file = unit_credential()
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / name).write_text(KEY)
    env = clean_env(GEOIPUPDATE_HOST=server.url, GEOIPUPDATE_ACCOUNT_ID=str(ACCOUNT),
                    GEOIPUPDATE_LICENSE_KEY_FILE=key_file.replace("%d", str(credentials)))
    cmd = [*sandbox.seccomp_prefix("geoblock-geoip-update.service"), sys.executable, "-m",
           "geoblock.tools.geoipupdate", "--config", str(conf), "--directory", str(installed)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    assert (installed / f"{COUNTRY}.mmdb").read_bytes() == builds.country_new
    assert (installed / f"{ASN}.mmdb").read_bytes() == builds.asn_new
    assert leftovers(installed) == []


def test_sample_credentials_count_as_none(tmp_path: Path, installed: Path, builds: Builds) -> None:
    conf = tmp_path / "GeoIP.conf"
    conf.write_text("AccountID 999999\nLicenseKey 000000000000\nEditionIDs GeoLite2-Country\n")
    result = run("--config", str(conf), "--directory", str(installed))
    assert result.returncode == 3, result.stderr
    assert "sample AccountID and LicenseKey" in result.stderr
    assert_unchanged(installed, builds)


def test_bad_configuration(tmp_path: Path, installed: Path, builds: Builds) -> None:
    conf = tmp_path / "GeoIP.conf"
    conf.write_text("AccountID 1\nNoSuchOption 3\n")
    result = run("--config", str(conf), "--directory", str(installed))
    assert result.returncode == 2, result.stderr
    assert f"{conf}: unknown option on line 2" in result.stderr
    missing = run("--config", str(tmp_path / "absent.conf"))
    assert missing.returncode == 2 and "absent.conf" in missing.stderr
    assert_unchanged(installed, builds)


def test_network_unreachable(conf: Path, installed: Path, builds: Builds) -> None:
    port = free_port()  # nothing listens there any more
    env = clean_env(GEOIPUPDATE_HOST=f"http://127.0.0.1:{port}", GEOIPUPDATE_ACCOUNT_ID=str(ACCOUNT),
                    GEOIPUPDATE_LICENSE_KEY=KEY)
    result = run("--config", str(conf), "--directory", str(installed), env=env)
    assert result.returncode == 6, result.stderr
    assert f"cannot reach http://127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert_unchanged(installed, builds)


def test_lock_held_by_another_run(server: UpdateServer, conf: Path, installed: Path, builds: Builds) -> None:
    with open(installed / ".geoipupdate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = update(server, conf, installed)
    assert result.returncode == 10, result.stderr
    assert "another update is running" in result.stderr
    assert sum(server.hits.values()) == 0
    assert_unchanged(installed, builds)


# --- unwritable directory and full disk (as root: permissions alone do not stop root) ---------------


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} failed ({done.stderr.strip()}): needs root with CAP_SYS_ADMIN")


@pytest.fixture
def read_only_dir(installed: Path) -> Iterator[Path]:
    _mount("--bind", str(installed), str(installed))
    try:
        done = subprocess.run(["mount", "-o", "remount,ro,bind", str(installed)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"remount read-only failed ({done.stderr.strip()})")
        yield installed
    finally:
        subprocess.run(["umount", str(installed)], check=True)


@pytest.fixture
def full_dir(db_dir: Path, builds: Builds) -> Iterator[Path]:
    db_dir.mkdir(parents=True)
    _mount("-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(db_dir))
    try:
        (db_dir / f"{COUNTRY}.mmdb").write_bytes(builds.country_old)
        (db_dir / f"{ASN}.mmdb").write_bytes(builds.asn_old)
        fd = os.open(db_dir / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield db_dir
    finally:
        subprocess.run(["umount", str(db_dir)], check=True)


def test_read_only_directory(server: UpdateServer, conf: Path, read_only_dir: Path, builds: Builds) -> None:
    with pytest.raises(OSError):
        (read_only_dir / "probe").write_bytes(b"x")  # really unwritable, even for root
    result = update(server, conf, read_only_dir)
    assert result.returncode == 8, result.stderr
    assert "Read-only file system" in result.stderr
    assert sum(server.hits.values()) == 0
    assert_unchanged(read_only_dir, builds)


def test_disk_full(server: UpdateServer, conf: Path, full_dir: Path, builds: Builds) -> None:
    result = update(server, conf, full_dir)
    assert result.returncode == 8, result.stderr
    assert "No space left on device" in result.stderr and "disk full" in result.stderr
    assert_unchanged(full_dir, builds)
    assert sorted(p.name for p in full_dir.iterdir()) == [".geoipupdate.lock", f"{ASN}.mmdb", f"{COUNTRY}.mmdb",
                                                          "filler"]


def test_directory_under_a_regular_file(server: UpdateServer, conf: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    result = update(server, conf, blocker / "geoip")
    assert result.returncode == 8, result.stderr
    assert "Not a directory" in result.stderr
    assert sum(server.hits.values()) == 0


# --- DB-IP -----------------------------------------------------------------------------------------


def months() -> tuple[str, str]:
    return geoipupdate.dbip_months(dt.datetime.now(dt.timezone.utc).date())


def epoch_in(month: str) -> int:
    year, mon = map(int, month.split("-"))
    return int(dt.datetime(year, mon, 2, tzinfo=dt.timezone.utc).timestamp())


def dbip(server: UpdateServer, db_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("--source", "dbip", "--dbip-url", f"{server.url}/dbip", "--directory", str(db_dir), *args,
               env=clean_env())


def dbip_hits(server: UpdateServer) -> dict[str, int]:
    return {k.removeprefix("dbip:"): v for k, v in server.hits.items() if k.startswith("dbip:")}


def test_dbip_first_download(server: UpdateServer, db_dir: Path, builds: Builds, tmp_path: Path) -> None:
    current, _ = months()
    country, asn = builds.dbip(tmp_path, "country", NOW), builds.dbip(tmp_path, "asn", NOW)
    server.publish_dbip("dbip-country-lite", current, country)
    server.publish_dbip("dbip-asn-lite", current, asn)
    result = run("--source", "dbip", "--directory", str(db_dir),
                 env=clean_env(GEOBLOCK_DBIP_URL=f"{server.url}/dbip/"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"dbip-country-lite: updated to build {day(NOW)}",
                                          f"dbip-asn-lite: updated to build {day(NOW)}"]
    assert (db_dir / "dbip-country-lite.mmdb").read_bytes() == country
    assert (db_dir / "dbip-asn-lite.mmdb").read_bytes() == asn
    assert leftovers(db_dir) == []


def test_dbip_already_current_asks_nothing(server: UpdateServer, db_dir: Path, builds: Builds,
                                           tmp_path: Path) -> None:
    db_dir.mkdir()
    (db_dir / "dbip-country-lite.mmdb").write_bytes(builds.dbip(tmp_path, "country", NOW))
    (db_dir / "dbip-asn-lite.mmdb").write_bytes(builds.dbip(tmp_path, "asn", NOW))
    before = md5(db_dir / "dbip-country-lite.mmdb")
    result = dbip(server, db_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"dbip-country-lite: already current (build {day(NOW)})",
                                          f"dbip-asn-lite: already current (build {day(NOW)})"]
    assert dbip_hits(server) == {}
    assert md5(db_dir / "dbip-country-lite.mmdb") == before


def test_dbip_falls_back_to_previous_month(server: UpdateServer, db_dir: Path, builds: Builds,
                                          tmp_path: Path) -> None:
    current, previous = months()
    country = builds.dbip(tmp_path, "country", epoch_in(previous))
    server.publish_dbip("dbip-country-lite", previous, country)
    server.publish_dbip("dbip-asn-lite", previous, builds.dbip(tmp_path, "asn", epoch_in(previous)))
    result = dbip(server, db_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"dbip-country-lite: updated to build {previous}-02",
                                          f"dbip-asn-lite: updated to build {previous}-02"]
    assert (db_dir / "dbip-country-lite.mmdb").read_bytes() == country
    assert dbip_hits(server) == {f"dbip-country-lite-{current}.mmdb.gz": 1, f"dbip-country-lite-{previous}.mmdb.gz": 1,
                                 f"dbip-asn-lite-{current}.mmdb.gz": 1, f"dbip-asn-lite-{previous}.mmdb.gz": 1}

    # Next run: the previous month is still all there is, and it is installed: nothing downloaded.
    server.hits.clear()
    again = dbip(server, db_dir)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"dbip-country-lite: already current (build {previous}-02)",
                                         f"dbip-asn-lite: already current (build {previous}-02)"]
    assert dbip_hits(server) == {f"dbip-country-lite-{current}.mmdb.gz": 1, f"dbip-asn-lite-{current}.mmdb.gz": 1}


def test_a_downloaded_asn_database_under_the_country_edition_is_refused(
        server: UpdateServer, conf: Path, installed: Path, builds: Builds) -> None:
    """geoip2 reads the file's type: an ASN database served as the Country edition is not installed."""
    server.publish(COUNTRY, builds.asn_new, day(NOW))
    result = update(server, conf, installed)
    assert result.returncode == 9, result.stderr
    assert (f"the downloaded {COUNTRY}.mmdb is not a usable database: expected a Country or City database "
            "(GeoLite2-Country, GeoLite2-City, GeoIP2-Country, GeoIP2-City, DB-IP's Country or City Lite), "
            "found a GeoLite2-ASN database") in result.stderr, result.stderr
    assert_unchanged(installed, builds)
    assert leftovers(installed) == []


def test_a_downloaded_database_with_a_corrupt_search_tree_is_refused(
        server: UpdateServer, conf: Path, installed: Path, builds: Builds) -> None:
    """Its metadata reads well; geoip2's probe lookup finds the search tree broken."""
    broken = bytearray(builds.country_new)
    broken[:1024] = b"\xff" * 1024
    server.publish(COUNTRY, bytes(broken), day(NOW))
    result = update(server, conf, installed)
    assert result.returncode == 9, result.stderr
    assert f"the downloaded {COUNTRY}.mmdb is not a usable database: database is corrupt (" in result.stderr, \
        result.stderr
    assert_unchanged(installed, builds)
    assert leftovers(installed) == []


@pytest.fixture
def dbip_installed(db_dir: Path, builds: Builds, tmp_path: Path) -> dict[str, bytes]:
    """DB-IP files from two or more months ago installed."""
    db_dir.mkdir()
    files = {"dbip-country-lite.mmdb": builds.dbip(tmp_path, "country", NOW - 70 * DAY),
             "dbip-asn-lite.mmdb": builds.dbip(tmp_path, "asn", NOW - 70 * DAY)}
    for name, data in files.items():
        (db_dir / name).write_bytes(data)
    return files


@pytest.mark.parametrize("failure, code, words", [
    ("corrupt", 9, "corrupt download"),
    ("429", 5, "HTTP 429"),
    ("not-mmdb", 9, "is not a usable database"),
    ("wrong-edition", 9, "not DBIP-Country-Lite"),
    ("missing", 1, "no dbip-country-lite file for"),
])
def test_dbip_failure_keeps_old_files(server: UpdateServer, db_dir: Path, builds: Builds, tmp_path: Path,
                                      dbip_installed: dict[str, bytes], failure: str, code: int, words: str) -> None:
    current, _ = months()
    country = {"not-mmdb": b"not a database\n" * 50, "wrong-edition": builds.country_new}.get(
        failure, builds.dbip(tmp_path, "country", NOW))
    if failure != "missing":
        server.publish_dbip("dbip-country-lite", current, country)
    server.failure = failure if failure in ("corrupt", "429") else None
    result = dbip(server, db_dir)
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("geoblock-geoip-update: dbip-country-lite: ") and words in result.stderr
    assert result.stderr.strip().endswith("(dbip-country-lite unchanged)")
    for name, data in dbip_installed.items():
        assert (db_dir / name).read_bytes() == data
    assert leftovers(db_dir) == []


def test_dbip_unreachable(db_dir: Path, dbip_installed: dict[str, bytes]) -> None:
    port = free_port()
    result = run("--source", "dbip", "--dbip-url", f"http://127.0.0.1:{port}/free", "--directory", str(db_dir),
                 env=clean_env())
    assert result.returncode == 6, result.stderr
    assert f"cannot reach http://127.0.0.1:{port}/free" in result.stderr and "refused" in result.stderr
    for name, data in dbip_installed.items():
        assert (db_dir / name).read_bytes() == data


def test_dbip_hanging_server(server: UpdateServer, db_dir: Path, dbip_installed: dict[str, bytes]) -> None:
    server.failure = "hang"
    result = dbip(server, db_dir, "--timeout", "1")
    assert result.returncode == 6, result.stderr
    assert "cannot reach" in result.stderr
    for name, data in dbip_installed.items():
        assert (db_dir / name).read_bytes() == data


# --- --check ---------------------------------------------------------------------------------------


def check(db_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("--check", "--directory", str(db_dir), *args)


def test_check_fresh(installed: Path, builds: Builds) -> None:
    result = check(installed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{COUNTRY}.mmdb: {COUNTRY} built {day(NOW - 10 * DAY)}, 10 days old (limit 14): ok",
        f"{ASN}.mmdb: {ASN} built {day(NOW - 10 * DAY)}, 10 days old (limit 14): ok",
    ]


def test_check_old_build(installed: Path, builds: Builds) -> None:
    (installed / f"{COUNTRY}.mmdb").write_bytes(builds.country_stale)
    result = check(installed)
    assert result.returncode == 11, result.stdout
    assert result.stdout.splitlines()[0] == (
        f"{COUNTRY}.mmdb: {COUNTRY} built {day(NOW - 30 * DAY)}, 30 days old: older than 14 days")
    assert check(installed, "--max-age", "30").returncode == 0
    assert check(installed, "--max-age", "5").returncode == 11
    quiet = check(installed, "--quiet")
    assert quiet.returncode == 11 and quiet.stdout.splitlines() == [result.stdout.splitlines()[0]]
    assert check(installed, "--quiet", "--max-age", "30").stdout == ""


def test_check_missing_and_unusable(installed: Path) -> None:
    (installed / f"{ASN}.mmdb").unlink()
    result = check(installed)
    assert result.returncode == 11
    assert f"{ASN}.mmdb: missing ({installed / (ASN + '.mmdb')})" in result.stdout
    (installed / f"{ASN}.mmdb").write_bytes(b"garbage" * 100)
    result = check(installed)
    assert result.returncode == 11 and f"{ASN}.mmdb: unusable: " in result.stdout


def test_check_includes_dbip_files(installed: Path, builds: Builds, tmp_path: Path) -> None:
    (installed / "dbip-country-lite.mmdb").write_bytes(builds.dbip(tmp_path, "country", NOW - 40 * DAY))
    result = check(installed)
    assert result.returncode == 0, result.stdout
    assert (f"dbip-country-lite.mmdb: DBIP-Country-Lite built {day(NOW - 40 * DAY)}, 40 days old (limit 45): ok"
            in result.stdout.splitlines())
    (installed / "dbip-country-lite.mmdb").write_bytes(builds.dbip(tmp_path, "country", NOW - 50 * DAY))
    assert check(installed).returncode == 11
    only = check(installed, "--source", "dbip")
    assert only.returncode == 11  # dbip-asn-lite is missing; the GeoLite2 files are not looked at
    assert "GeoLite2" not in only.stdout and "dbip-asn-lite.mmdb: missing" in only.stdout


# --- command line, docs, wrapper -------------------------------------------------------------------


def test_help_documents_every_exit_code() -> None:
    result = run("--help")
    assert result.returncode == 0
    for code, text in geoipupdate.EXIT_CODES:
        assert f"{code:>2}  {text}" in result.stdout
        assert f"{code:>2}  {text}" in geoipupdate.__doc__
    assert len({code for code, _ in geoipupdate.EXIT_CODES}) == len(geoipupdate.EXIT_CODES)


def test_max_age_needs_check() -> None:
    result = run("--max-age", "3")
    assert result.returncode == 2 and "--max-age goes with --check" in result.stderr


def test_wrapper_script_runs_the_tool(installed: Path) -> None:
    script = REPO / "scripts" / "geoip-update"
    assert os.access(script, os.X_OK)
    env = clean_env(GEOBLOCK_VENV=sys.prefix)
    result = subprocess.run([str(script), "--check", "--directory", str(installed)], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert f"{COUNTRY}.mmdb: {COUNTRY} built" in result.stdout
