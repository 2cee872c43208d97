# The image the Helm chart (helm/tripwire) runs. Build and tag it as the chart expects:
#   docker build -t tripwire:$(python3 -c 'import proxy; print(proxy.__version__)') .
#
# It installs exactly the runtime packages pinned in uv.lock (no dev or test tools), with the
# same uv version the Makefile uses, so the image holds the versions the suite tested. The
# `otel` extra (the OpenTelemetry SDK and OTLP exporters) is in, so the chart's `otel.endpoint`
# turns traces on without another image; so is the `uvloop` extra, whose event loop
# `tripwire serve` then runs on.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PROJECT_ENVIRONMENT=/opt/tripwire \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
RUN pip install 'uv==0.13.9'
# A C compiler for the content detectors' extension (proxy/detectors/_native.c), in this stage
# only: the runtime stage gets the built module, not the compiler.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml setup.py uv.lock README.md ./
RUN uv sync --locked --no-dev --extra otel --extra uvloop --no-install-project
COPY proxy ./proxy
RUN uv sync --locked --no-dev --extra otel --extra uvloop --no-editable

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/tripwire/bin:$PATH
COPY --from=build /opt/tripwire /opt/tripwire

# The default policy, for `docker run` without a config; the chart mounts its own.
WORKDIR /app
COPY rules/policy.yaml rules/policy.yaml

RUN groupadd --system --gid 10001 tripwire \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tripwire
USER 10001:10001

# Tripwire listens on 127.0.0.1 by default, unreachable from outside a container.
ENV TRIPWIRE_SERVER__HOST=0.0.0.0
# The user has no home: the local admin token (auth.mode none) goes to /tmp, writable here and
# in the chart; `docker exec <container> tripwire console` prints the signed-in link.
ENV TRIPWIRE_AUTH__LOCAL_ADMIN_FILE=/tmp/tripwire/admin-token
EXPOSE 8787
ENTRYPOINT ["tripwire", "serve"]
