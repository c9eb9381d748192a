"""Run the whole system on one machine: `make run` (or `python -m backend.tools.dev`).

Starts an embedded S3 store (SeaweedFS, data in ./data/seaweed) unless STORAGE_URL points
elsewhere, the backend with the contract's command, and the Streamlit frontend. MODEL_ID=tiny
writes and uses the tiny random pipeline (offline smoke runs: it draws noise, fast).
Ctrl-C stops everything.
"""

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from backend.tools.seaweed import SeaweedS3, free_port

DATA = Path("data").resolve()
BUCKET = "showroom"


def _local_s3_credentials() -> tuple[str, str]:
    """Credentials for the embedded store, made once and kept in data/ (never printed)."""
    path = DATA / ".s3-credentials"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        path.write_text(f"showroom-{secrets.token_hex(4)}\n{secrets.token_urlsafe(24)}\n")
        path.chmod(0o600)
    key, secret = path.read_text().split()
    return key, secret


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _tiny_model() -> Path:
    """MODEL_ID=tiny: the tiny random pipeline, built once into data/ (offline, seconds)."""
    from backend.tools.tiny import build_tiny_pipeline

    tiny = DATA / "tiny-sd"
    if not (tiny / "model_index.json").exists():
        build_tiny_pipeline(tiny)
    return tiny


def _tiny_remover() -> Path:
    """With MODEL_ID=tiny: a tiny background remover that takes whatever is not white for the product, built once
    into data/ (the default, birefnet-general, is a download)."""
    from backend.tools.tiny import build_tiny_segmenter

    path = DATA / "tiny-segmenter.onnx"
    return path if path.exists() else build_tiny_segmenter(path)


def _local_store(env: dict) -> SeaweedS3:
    """No STORAGE_URL: SeaweedFS's S3 on this machine (data in data/seaweed), its settings put into `env`."""
    key, secret = _local_s3_credentials()
    store = SeaweedS3(DATA / "seaweed", BUCKET, key, secret, s3_port=8333 if _port_free(8333) else free_port())
    store.start()
    env |= {"STORAGE_URL": f"s3://{BUCKET}", "S3_ENDPOINT_URL": store.endpoint, "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1"}
    print(f"storage: SeaweedFS S3 at {store.endpoint}, bucket {BUCKET}, data in {DATA / 'seaweed'}")
    return store


def main() -> None:
    env = dict(os.environ)
    if env.get("MODEL_ID", "").lower() == "tiny":
        env["MODEL_ID"] = str(_tiny_model())
        if not env.get("BG_REMOVAL_MODEL"):  # offline too: products from photos, and place mode, need a remover
            env["BG_REMOVAL_MODEL"] = str(_tiny_remover())
    store = None if env.get("STORAGE_URL") else _local_store(env)
    backend_port = int(env.get("BACKEND_PORT", 8000))
    env.setdefault("BACKEND_URL", f"http://localhost:{backend_port}")
    # This machine only, unless HOST says otherwise: the page is a loopback client of a backend that
    # may have no API_KEY, so anyone who could reach either port could generate, upload and delete.
    host = env.get("HOST", "127.0.0.1")
    procs = [
        subprocess.Popen([sys.executable, "-m", "uvicorn", "backend.main:app", "--host", host,
                          "--port", str(backend_port)], env=env),
        subprocess.Popen([sys.executable, "-m", "streamlit", "run", "frontend/streamlit_app.py",
                          "--server.headless", "true", "--server.address", host], env=env),
    ]
    print(f"backend:  {env['BACKEND_URL']}  (model {env.get('MODEL_ID', 'default')}; first start downloads it)")
    print("frontend: http://localhost:8501    (Ctrl-C stops everything; your pictures stay in data/)")
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        announced = False
        while not stopping and all(p.poll() is None for p in procs):
            if not announced:
                try:
                    health = requests.get(f"http://127.0.0.1:{backend_port}/health", timeout=2).json()
                    if health["status"] in ("ok", "degraded", "error"):
                        print(f"backend is {health['status']}: {health.get('detail') or 'ready'}; open "
                              "http://localhost:8501")
                        announced = True
                except requests.RequestException:
                    pass
            time.sleep(1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if store:
            store.stop()


if __name__ == "__main__":
    main()
