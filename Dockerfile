# pypx-listener: the repack sidecar, and an unmodified dcmtk storescp, in one image.
#
#   docker build -t pypx-listener .
#   docker run -v incoming:/srv/incoming -v data:/srv/data -v log:/srv/log pypx-listener
#   docker run -p 11113:11113 -v incoming:/srv/incoming pypx-listener \
#       storescp --fork -od /srv/incoming -pm -sp 11113
#
# Debian's own Python 3.11 on debian:bookworm-slim: the same interpreter as the
# README's commands use, and a base that is reproduced exactly where no image
# registry is reachable (debootstrap --variant=minbase). Dependencies are pinned
# by constraints.txt, which the tests install from too.
FROM debian:bookworm-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY repack ./repack
COPY watcher ./watcher
# A venv, copied whole into the final stage: no wheel files in any layer.
# Where pip must trust a proxy's certificate, give it a pip.conf (and the
# certificate it names) as build secrets: mounted for this step alone, never
# in a layer. E.g. podman build --secret id=pip.conf,src=pip.conf
#   --secret id=ca.crt,src=/etc/ssl/certs/ca-certificates.crt (cert = /run/secrets/ca.crt).
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=ca.crt \
    if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
    && python3 -m venv /opt/pypx-listener \
    && /opt/pypx-listener/bin/pip install --no-cache-dir --disable-pip-version-check \
        --constraint constraints.txt '.[chris]' \
    && /opt/pypx-listener/bin/pip uninstall --yes --quiet pip

FROM debian:bookworm-slim
# tini is PID 1: storescp has no SIGTERM handler, and as PID 1 the kernel would
# drop the signal (docker stop then waits and kills). tini passes it on, to the
# whole process group (-g: storescp --fork children too), and reaps them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 dcmtk tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/pypx-listener /opt/pypx-listener
# uid and gid 10001, as the Kubernetes manifest's securityContext says.
RUN groupadd --system --gid 10001 pypx \
    && useradd --system --uid 10001 --gid 10001 --home-dir /srv --shell /usr/sbin/nologin pypx \
    && mkdir -p /srv/incoming /srv/data /srv/log /srv/quarantine \
    && chown -R 10001:10001 /srv
USER 10001:10001
WORKDIR /srv
ENV PATH=/opt/pypx-listener/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    TCP_NODELAY=1 \
    PYPX_LISTENER_INCOMING=/srv/incoming \
    PYPX_LISTENER_DATADIR=/srv/data \
    PYPX_LISTENER_LOGDIR=/srv/log \
    PYPX_LISTENER_QUARANTINE=/srv/quarantine \
    PYPX_LISTENER_METRICS_PORT=9100 \
    PYPX_LISTENER_LOG_FORMAT=json
# No VOLUME: the volumes are the compose file's and the manifest's to name.
EXPOSE 9100 11113
# One check for whichever program runs under tini: /healthz for pypx-listener,
# the DICOM port for storescp.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["pypx-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "-g", "--"]
CMD ["pypx-listener"]
