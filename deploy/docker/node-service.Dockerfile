# syntax=docker/dockerfile:1
#
# One image recipe for the five TypeScript services. Build from the repository root:
#
#   docker build -f deploy/docker/node-service.Dockerfile --build-arg SERVICE=gateway -t ragtune/gateway:0.1.0 .
#
# SERVICE is one of ingest, dataset, trainer, eval, gateway (the trainer's production image, which also
# carries the Python worker and CUDA torch, is deploy/docker/trainer.Dockerfile; this one gives a trainer
# without a worker environment, useful only to check the API). The build context's ignore file is
# node-service.Dockerfile.dockerignore next to this file (BuildKit picks it up by name).

# Node 22 LTS (Node 20 is past its end of life; @connectrpc/connect-node 2.2 and @nats-io/nuid declare node >= 22).
ARG NODE_VERSION=22
ARG NODE_IMAGE=node:${NODE_VERSION}-bookworm-slim

# ---- source: the repository, and its package manifests alone (so the npm layers stay cached until a
# package.json or the lockfile changes).
FROM ${NODE_IMAGE} AS source
WORKDIR /src
COPY . .
RUN mkdir /manifests \
 && cp package.json package-lock.json /manifests/ \
 && find libs services tools -name package.json -not -path "*/node_modules/*" -exec cp --parents {} /manifests/ \;

# ---- build: the root dev tools (nx, typescript) + the service's dependencies, then `nx run <svc>:build`,
# which compiles the libraries the service depends on first (dist/ of each).
FROM ${NODE_IMAGE} AS build
ARG SERVICE
RUN case "${SERVICE}" in \
      ingest|dataset|trainer|eval|gateway) ;; \
      *) echo "build-arg SERVICE must be one of ingest, dataset, trainer, eval, gateway (got '${SERVICE}')" >&2; exit 1 ;; \
    esac
ENV NX_DAEMON=false NX_NO_CLOUD=true NX_TUI=false CI=true
WORKDIR /app
COPY --from=source /manifests/ ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund --include-workspace-root --workspace "@ragtune/${SERVICE}-service"
COPY --from=source /src/ ./
RUN npx nx run "@ragtune/${SERVICE}-service:build" --outputStyle=static \
 && mkdir /out \
 && node tools/scripts/production-workspaces.mjs "@ragtune/${SERVICE}-service" > /tmp/workspaces \
 && while read -r name dir; do cp -r --parents "${dir}/dist" /out/; done < /tmp/workspaces

# ---- prod-deps: only the production dependencies of the service (and of the libraries it links): --omit=dev
# leaves out the root's tools and every devDependency, which is where the test-only packages are declared
# (vitest, the reference tokenizer binding `tokenizers`; tools/test/deploy.test.ts checks that no workspace declares
# one as a dependency). npm still links every workspace package reachable through devDependencies (@ragtune/testing),
# so the links outside the service's production closure (tools/scripts/production-workspaces.mjs) are removed, as
# the build stage copies only that closure's dist/. The build fails if a test-only package is left.
FROM ${NODE_IMAGE} AS prod-deps
ARG SERVICE
WORKDIR /app
COPY --from=source /manifests/ ./
COPY --from=source /src/tools/scripts/production-workspaces.mjs /opt/ragtune/production-workspaces.mjs
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund --omit=dev --workspace "@ragtune/${SERVICE}-service" \
 && node /opt/ragtune/production-workspaces.mjs "@ragtune/${SERVICE}-service" | cut -d " " -f 1 > /tmp/needed \
 && for link in node_modules/@ragtune/*; do \
      grep -qx "@ragtune/$(basename "${link}")" /tmp/needed || rm -rf "${link}"; \
    done \
 && for pkg in @ragtune/testing vitest tokenizers; do \
      if [ -e "node_modules/${pkg}" ]; then echo "test-only package ${pkg} in the production install" >&2; exit 1; fi; \
    done

# ---- runtime
FROM ${NODE_IMAGE} AS runtime
ARG SERVICE
LABEL org.opencontainers.image.title="ragtune-${SERVICE}"
ENV NODE_ENV=production \
    SERVICE=${SERVICE} \
    RPC_HOST=0.0.0.0 \
    RPC_PORT=8080
WORKDIR /app
# Manifests + node_modules (workspace links point at libs/* and services/*), then the compiled code.
COPY --from=prod-deps /app/ ./
COPY --from=build /out/ ./
# The node image's unprivileged user, by number so Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 8080
# exec: node becomes PID 1 and gets SIGTERM directly (runService handles it: health NOT_SERVING, drain, exit).
CMD ["/bin/sh", "-c", "exec node \"services/${SERVICE}/dist/main.js\""]
