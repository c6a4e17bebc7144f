# cimcal: the API (`cimcal serve`) and the batch worker (`cimcal worker`) from one image.
#
# Torch is pinned at 2.13.0 and installed before cimcal, so nothing pulls a newer (CUDA) build.
# The CPU wheel is not fetched from any special index here: put it in ./wheels/ and name it,
#   docker build --build-arg TORCH_WHEEL=<the torch 2.13.0 CPU wheel file name> -t cimcal .
# Without TORCH_WHEEL the build runs `pip install torch==2.13.0` from the default index.
FROM python:3.11-slim

ARG TORCH_WHEEL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CIMCAL_IMAGE_STORE_DIR=/var/lib/cimcal/images \
    CIMCAL_CACHE_DIR=/var/lib/cimcal/cache

WORKDIR /opt/cimcal

# pyproject.toml makes the COPY valid when there is no wheels/ directory.
COPY pyproject.toml wheel[s] /tmp/wheels/
RUN if [ -n "$TORCH_WHEEL" ]; then \
        pip install "/tmp/wheels/$TORCH_WHEEL"; \
    else \
        pip install "torch==2.13.0"; \
    fi \
    && rm -rf /tmp/wheels

# Editable install: the Alembic migrations are read from the source tree (app/db/migrate.py).
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY hardware ./hardware
COPY migrations ./migrations
RUN pip install -e . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin cimcal \
    && mkdir -p /var/lib/cimcal/images /var/lib/cimcal/cache \
    && chown -R cimcal:cimcal /var/lib/cimcal

USER cimcal
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["cimcal", "serve", "--host", "0.0.0.0", "--port", "8000"]
