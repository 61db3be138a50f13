# syntax=docker/dockerfile:1
# presetdb images, used by docker-compose.yml (docs/auditing.md explains the services).
#   app  : the store, the CLI, `presetdb build` and datasette. No torch/triton/helion:
#          the store, build and audit layers never import them, so the image stays small.
#   tune : app plus the GPU stack (torch + triton + helion) for `presetdb tune`.

FROM python:3.11-slim AS app
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first (their layer survives source edits), read from pyproject.toml.
COPY pyproject.toml README.md ./
COPY docker/app_requirements.py docker/
RUN python docker/app_requirements.py pyproject.toml > /tmp/app-requirements.txt \
 && pip install -r /tmp/app-requirements.txt
COPY presetdb presetdb
COPY migrations migrations
COPY seed_data seed_data
# --no-deps: the GPU stack stays out of this image. The datasette metadata (canned
# queries from presetdb/audit/sql/*.sql, column descriptions from the models) is generated
# here, from the installed package, so it cannot drift from it.
RUN pip install --no-deps . \
 && presetdb build --embedded \
 && presetdb audit --datasette-metadata /app/datasette-metadata.json
WORKDIR /data
EXPOSE 8001
CMD ["presetdb", "--help"]

FROM app AS tune
# Triton compiles a small C launcher at run time: it needs a C compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# The GPU machines run torch 2.11 / triton 3.6; helion 1.5.1 needs torch >= 2.12, so the
# image pins helion 1.5.0 inside pyproject's range (helion>=1.5.0,<1.6).
ARG TORCH_VERSION=2.11.0
ARG TRITON_VERSION=3.6.0
ARG HELION_VERSION=1.5.0
RUN python /src/docker/app_requirements.py --gpu /src/pyproject.toml > /tmp/gpu-requirements.txt \
 && pip install "torch==${TORCH_VERSION}" "triton==${TRITON_VERSION}" -r /tmp/gpu-requirements.txt \
    "helion==${HELION_VERSION}"
WORKDIR /results
