# pypx-listener: the repack sidecar, and an unmodified dcmtk storescp, in one image.
#
#   docker build -t pypx-listener .
#   docker run -v incoming:/srv/incoming -v data:/srv/data -v log:/srv/log pypx-listener
#   docker run -p 11113:11113 -v incoming:/srv/incoming pypx-listener \
#       storescp --fork -od /srv/incoming -pm -sp 11113
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY repack ./repack
COPY watcher ./watcher
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends dcmtk \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
RUN useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin pypx \
    && mkdir -p /srv/incoming /srv/data /srv/log /srv/quarantine \
    && chown -R pypx:pypx /srv
USER pypx
WORKDIR /srv
ENV PYTHONUNBUFFERED=1 \
    TCP_NODELAY=1 \
    PYPX_LISTENER_INCOMING=/srv/incoming \
    PYPX_LISTENER_DATADIR=/srv/data \
    PYPX_LISTENER_LOGDIR=/srv/log \
    PYPX_LISTENER_QUARANTINE=/srv/quarantine \
    PYPX_LISTENER_METRICS_PORT=9100 \
    PYPX_LISTENER_LOG_FORMAT=json
VOLUME ["/srv/incoming", "/srv/data", "/srv/log", "/srv/quarantine"]
EXPOSE 9100 11113
# Exec form: the service is PID 1 and receives docker stop's SIGTERM itself.
# One check for whichever program runs: /healthz for pypx-listener, the DICOM
# port for storescp (it reads what PID 1 is).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["pypx-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT []
CMD ["pypx-listener"]
