# syntax=docker/dockerfile:1
# Showroom's frontend (Streamlit): only frontend/requirements.txt, no torch. Build from the repo root:
#   docker build -f docker/frontend.Dockerfile -t showroom-frontend .
# Settings (BACKEND_URL, API_KEY, STORAGE_URL, S3_ENDPOINT_URL, AWS_*, APP_PASSWORD) come from the
# environment at run time, never from the image.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMLIT_SERVER_ADDRESS=0.0.0.0 \
    STREAMLIT_SERVER_PORT=8501 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

RUN groupadd --gid 10001 showroom \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin showroom
WORKDIR /app

COPY frontend/requirements.txt frontend/
RUN pip install --no-cache-dir -r frontend/requirements.txt

# The app imports backend.storage (plain boto3): the backend package comes along, its heavy
# dependencies do not. .streamlit/config.toml holds the theme; secrets.toml is never copied.
COPY .streamlit/config.toml .streamlit/
COPY backend/ backend/
COPY frontend/ frontend/

USER 10001:10001
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]

CMD ["streamlit", "run", "frontend/streamlit_app.py"]
