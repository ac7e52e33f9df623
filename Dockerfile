# The slas image the Helm chart (helm/slas) runs: trainer, MLflow server, review UI and reward server.
# Build: `make image` (tags slas:<version>, the chart's default image). CUDA runtime base; torch is pinned as a
# pair before the project resolves it, as the Makefile does; runs as the non-root user 1000 (the chart's
# runAsUser), with the repository at /opt/slas (configs/, data/ and helm/ included; read-only at run time).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# the torch/torchvision pair (PyPI's Linux wheels are CUDA builds); keep in step with the Makefile's pin
ARG TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && python -m pip install --upgrade pip

# torch first, in its own layer: it is most of the image and changes least often
RUN python -m pip install $TORCH_SPEC

WORKDIR /opt/slas
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install ".[cluster]" $TORCH_SPEC
COPY configs ./configs
COPY data ./data
COPY helm ./helm

# uid 1000 is the chart's runAsUser; Ubuntu's stock `ubuntu` user holds it, so it is replaced
RUN (userdel --remove ubuntu 2>/dev/null || true) \
 && groupadd --gid 1000 slas \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/slas --shell /usr/sbin/nologin slas

ENV SLAS_HELM_CHART=/opt/slas/helm/slas \
    HOME=/home/slas \
    SLAS_HOME=/data/slas \
    HF_HOME=/models/huggingface \
    HF_HUB_OFFLINE=1

USER 1000:1000
CMD ["slas", "--help"]
