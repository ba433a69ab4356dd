# syntax=docker/dockerfile:1
# Hilum's node (`hilum serve`) in a container.  Build from the repository root:
#
#   docker build -f installer/docker/Dockerfile -t hilum:0.1.0 .
#
# (BuildKit reads installer/docker/Dockerfile.dockerignore for this Dockerfile.)  The image holds the
# Hilum wheel installed with the exact versions the test suite passed with (constraints.txt, made by
# pin_constraints.py).  `hilum serve` imports neither Qt nor VTK, so none of the X/GL libraries the
# workstation needs are installed: the Python wheels bring their own compiled code.  See
# installer/SERVER.md ("Containers") and compose.yaml beside this file.

# ---- build: a wheel of Hilum (pure Python; setuptools from pyproject's build-system, pinned here)
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
RUN pip install --no-cache-dir setuptools==84.2.1 wheel==0.48.0
COPY pyproject.toml README.md ./
COPY app/ app/
COPY resources/ resources/
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# ---- runtime
FROM python:3.11.7-slim-bookworm
LABEL org.opencontainers.image.title="Hilum node" \
      org.opencontainers.image.description="DICOM mini-PACS: DIMSE, DICOMweb and HL7 (hilum serve)" \
      org.opencontainers.image.licenses="MIT"
COPY installer/docker/constraints.txt /tmp/constraints.txt
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --constraint /tmp/constraints.txt /tmp/wheels/hilum-*-py3-none-any.whl \
    && rm -rf /tmp/wheels /tmp/constraints.txt \
    && groupadd --system --gid 10001 hilum \
    && useradd --system --uid 10001 --gid hilum --home-dir /var/lib/hilum --no-create-home \
       --shell /usr/sbin/nologin hilum \
    && install -d -o hilum -g hilum -m 0750 /var/lib/hilum /var/lib/hilum/logs

# The data folder: index (SQLite, unless [archive] database_url names PostgreSQL), blobs, hilum.toml, logs.
ENV HILUM_DATA=/var/lib/hilum \
    XDG_CACHE_HOME=/var/lib/hilum/.cache \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/hilum"]
WORKDIR /var/lib/hilum
USER 10001:10001

# DICOM (DIMSE), DICOMweb (HTTP, also /metrics for admins), HL7 MLLP
EXPOSE 11112 8042 2575

# `hilum status` exits 0 when the node's process is alive and every port it listens on accepts.
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD ["hilum", "status", "--data", "/var/lib/hilum", "--json"]

# SIGTERM: listeners close, associations in flight finish for up to [node] stop_timeout (30 s), exit 0.
# Give the container longer than that to stop: docker stop -t 90 / compose stop_grace_period: 90s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["hilum"]
CMD ["serve", "--data", "/var/lib/hilum", "--bind", "0.0.0.0"]
