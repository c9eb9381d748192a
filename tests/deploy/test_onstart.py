"""docker/onstart.sh: the exact commands it runs (dry run), the environment it writes, and a real start
with a stand-in `uvicorn` on PATH. Run under both dash (POSIX sh, as vast may run it) and bash."""

import os
import pwd
import shutil
import stat
import subprocess

import pytest

from tests.deploy.vast_standin import load_launcher
from tests.factories import REPO

SCRIPT = REPO / "docker" / "onstart.sh"
SECRETS = {"API_KEY": "backend-key-abcdef", "AWS_SECRET_ACCESS_KEY": "s3-secret-zyxwvu",
           "CONTAINER_API_KEY": "scoped-key-987654"}
SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)]


def run_onstart(shell: str, tmp_path, script=SCRIPT, **env) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "PUBLIC_IPADDR": "203.0.113.7", "VAST_TCP_PORT_8000": "41234",
            "CONTAINER_ID": "4242", "STORAGE_URL": "s3://shots", "SHOWROOM_LOG": str(tmp_path / "backend.log")}
    return subprocess.run([shell, str(script)], env=base | SECRETS | env, capture_output=True, text=True, timeout=30)


def assert_no_secret(text: str) -> None:
    for value in SECRETS.values():
        assert value not in text


@pytest.mark.parametrize("shell", SHELLS)
def test_onstart_dry_run_prints_the_exact_commands(shell, tmp_path):
    out = run_onstart(shell, tmp_path, SHOWROOM_DRY_RUN="1", SHOWROOM_USER="nobody",
                      SHOWROOM_ENV_FILE=str(tmp_path / "environment"))
    assert out.returncode == 0, out.stderr
    nobody = pwd.getpwnam("nobody")
    drop = (f"setpriv --reuid={nobody.pw_uid} --regid={nobody.pw_gid} --init-groups env HOME={nobody.pw_dir} "
            if os.geteuid() == 0 else "")
    assert out.stdout.splitlines() == [
        f"exported {len(exported(tmp_path / 'environment'))} variables to {tmp_path / 'environment'} for SSH sessions",
        "+ cd /app",
        f"+ nohup {drop}uvicorn backend.main:app --host 0.0.0.0 --port 8000 >>{tmp_path / 'backend.log'} 2>&1 &",
        "Showroom backend: http://203.0.113.7:41234",
        "Set the frontend's BACKEND_URL to it; it answers once GET /health says \"ok\".",
    ]
    assert_no_secret(out.stdout + out.stderr)
    # what docker/vast.py sends (comments stripped) behaves the same
    sent = tmp_path / "onstart-sent.sh"
    sent.write_text(load_launcher("vast_instance").onstart_script())
    again = run_onstart(shell, tmp_path, script=sent, SHOWROOM_DRY_RUN="1", SHOWROOM_USER="nobody",
                        SHOWROOM_ENV_FILE=str(tmp_path / "environment"))
    assert (again.returncode, again.stdout, again.stderr) == (0, out.stdout, out.stderr)


def exported(path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    block = lines[lines.index(next(line for line in lines if line.startswith("# >>> showroom"))) + 1:
                  lines.index("# <<< showroom")]
    return {line.split("=", 1)[0]: line.split("=", 1)[1] for line in block}


@pytest.mark.parametrize("shell", SHELLS)
def test_onstart_exports_the_environment_for_ssh_sessions_once(shell, tmp_path):
    env_file = tmp_path / "environment"
    env_file.write_text('PATH="/usr/local/bin:/usr/bin:/bin"\n')
    for _ in range(2):  # every start rewrites the block instead of appending another
        out = run_onstart(shell, tmp_path, SHOWROOM_DRY_RUN="1", SHOWROOM_ENV_FILE=str(env_file),
                          MULTI="two\nINJECTED=lines", QUOTED='say "hi"')
        assert out.returncode == 0, out.stderr
    text = env_file.read_text()
    assert text.startswith('PATH="/usr/local/bin:/usr/bin:/bin"\n')
    assert text.count("# >>> showroom") == 1 and text.count("# <<< showroom") == 1
    values = exported(env_file)
    assert values["API_KEY"] == f'"{SECRETS["API_KEY"]}"'
    assert values["CONTAINER_API_KEY"] == f'"{SECRETS["CONTAINER_API_KEY"]}"'
    assert values["CONTAINER_ID"] == '"4242"' and values["PUBLIC_IPADDR"] == '"203.0.113.7"'
    assert values["PATH"].startswith('"/opt/venv/bin:')
    assert "QUOTED" not in values and "skipping QUOTED: its value holds a double quote" in out.stderr
    # a value over two lines is left out whole: neither its first line nor a second line that looks like a variable
    assert "MULTI" not in values and "INJECTED" not in values
    assert "skipping MULTI: its value holds a newline" in out.stderr
    assert not any(name.startswith("SHOWROOM_") for name in values)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600  # it holds keys
    assert_no_secret(out.stdout + out.stderr)


def test_onstart_dry_run_without_env_file_writes_nothing(tmp_path):
    before = open("/etc/environment").read() if os.path.exists("/etc/environment") else None
    out = run_onstart("sh", tmp_path, SHOWROOM_DRY_RUN="1")
    assert out.returncode == 0, out.stderr
    assert "+ (dry run) would write the environment to /etc/environment" in out.stdout
    after = open("/etc/environment").read() if os.path.exists("/etc/environment") else None
    assert before == after


def test_onstart_without_public_port_says_how_to_open_it(tmp_path):
    out = run_onstart("sh", tmp_path, SHOWROOM_DRY_RUN="1", SHOWROOM_ENV_FILE=str(tmp_path / "e"),
                      VAST_TCP_PORT_8000="")
    assert out.returncode == 0
    assert "Showroom backend:" not in out.stdout
    assert "create the instance with the docker option -p 8000:8000" in out.stderr


def test_onstart_really_starts_the_backend_command(tmp_path):
    """Not a dry run: a stand-in `uvicorn` first on PATH records how it was started."""
    bin_dir, app_dir, record = tmp_path / "bin", tmp_path / "app", tmp_path / "started"
    bin_dir.mkdir()
    app_dir.mkdir()
    fake = bin_dir / "uvicorn"
    fake.write_text(f'#!/bin/sh\n{{ pwd; echo "$@"; echo "key=$API_KEY"; }} > {record}\n')
    fake.chmod(0o755)
    out = run_onstart("sh", tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}", SHOWROOM_APP_DIR=str(app_dir),
                      SHOWROOM_USER="no-such-user-here", SHOWROOM_ENV_FILE=str(tmp_path / "environment"))
    assert out.returncode == 0, out.stderr
    assert "backend started (pid " in out.stdout
    for _ in range(100):  # the backend runs in the background
        if record.exists() and record.read_text().count("\n") == 3:
            break
        subprocess.run(["sleep", "0.05"])
    assert record.read_text().splitlines() == [
        str(app_dir), "backend.main:app --host 0.0.0.0 --port 8000", f"key={SECRETS['API_KEY']}"]
    assert_no_secret(out.stdout + out.stderr)


@pytest.mark.parametrize("shell", SHELLS)
def test_onstart_role_node_starts_the_gpu_node_and_asks_for_no_port(shell, tmp_path):
    out = run_onstart(shell, tmp_path, SHOWROOM_DRY_RUN="1", SHOWROOM_USER="no-such-user-here",
                      SHOWROOM_ENV_FILE=str(tmp_path / "environment"), SHOWROOM_ROLE="node",
                      SHOWROOM_NODE_NAME="vast-ab12cd", VAST_TCP_PORT_8000="")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == [
        "+ cd /app",
        f"+ nohup python -m backend.node --name vast-ab12cd >>{tmp_path / 'backend.log'} 2>&1 &",
        "GPU node vast-ab12cd: it pulls work from BROKER_URL and shows in the backend's /health",
    ]
    assert out.stderr == "", "a node needs no public port: no complaint about one"
    assert "SHOWROOM_ROLE" not in (tmp_path / "environment").read_text()
