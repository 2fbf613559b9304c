# HeteroSP for GPU clusters. Build on a machine with a Docker engine:
#   docker build -t hetero-sp .
# The base image brings CUDA, NCCL and its own PyTorch; installing HeteroSP keeps that torch.
FROM nvcr.io/nvidia/pytorch:25.01-py3

WORKDIR /opt/hetero-sp
ENV TORCH_EXTENSIONS_DIR=/opt/torch_extensions \
    PIP_NO_CACHE_DIR=1

# Without build isolation pip builds with the installed setuptools: 77 or newer reads the SPDX
# license field of pyproject.toml.
RUN pip install "setuptools>=77"

# flash-attn compiles against the image's torch; no build isolation so it sees it. MAX_JOBS
# bounds the parallel compiler jobs (flash-attn's install notes: unbounded, they can exhaust
# the memory of a machine with many cores); 2.x is the series with the varlen API we call.
ARG MAX_JOBS=4
RUN MAX_JOBS=${MAX_JOBS} pip install --no-build-isolation "flash-attn>=2.6,<3"

COPY pyproject.toml README.md ./
COPY hetero_sp ./hetero_sp
COPY configs ./configs
COPY launch ./launch
RUN pip install --no-build-isolation -e ".[gpu]"

CMD ["bash"]
