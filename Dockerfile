# Imagegate image: the API (`imagegate serve`, the default command), the arq worker
# (`imagegate worker`) and the schema migration (`imagegate migrate`) all run from it.
#
#   docker build -t imagegate:0.1.0 .
#   docker run --rm -p 8000:8000 imagegate:0.1.0
#
# Without IMAGEGATE_DATABASE_URL and IMAGEGATE_REDIS_URL the container runs the embedded
# default (SQLite in /data, embedded job runner). In production, set both (PostgreSQL, Redis),
# IMAGEGATE_ENV=production and IMAGEGATE_SECRET_KEY, and mount a volume on /data.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the project and its dependencies into a virtual environment ---------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY . .
RUN pip install .

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# A CJK font: Chinese prompts on preview images and Chinese watermark texts are drawn as glyphs.
RUN apt-get update && apt-get install -y --no-install-recommends fonts-wqy-zenhei \
    && rm -rf /var/lib/apt/lists/*

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IMAGEGATE_VAR_DIR=/data \
    IMAGEGATE_ASSET_DIR=/data/assets \
    IMAGEGATE_DATABASE_URL=sqlite:////data/imagegate.db

RUN groupadd --system --gid 10001 imagegate \
 && useradd --system --uid 10001 --gid imagegate --home-dir /home/imagegate --create-home \
        --shell /usr/sbin/nologin imagegate \
 && mkdir -p /data/assets \
 && chown -R imagegate:imagegate /data

COPY --from=build /opt/venv /opt/venv

WORKDIR /data
USER 10001:10001

EXPOSE 8000

CMD ["imagegate", "serve", "--host", "0.0.0.0", "--port", "8000"]
