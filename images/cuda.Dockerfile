# llama-server for NVIDIA GPUs (CUDA), built from verified llama.cpp source.
#
# NOT BUILT OR RUN on the machines this project is developed and tested on:
# they have no GPU and no registry to pull the NVIDIA base images from. It is
# written to build where a registry exists:
#
#   llama-supervisorctl build cuda        (or docker build -f images/cuda.Dockerfile ...)
#
# Same context and build arguments as images/Dockerfile. The binary links the
# CUDA runtime dynamically (libcudart/libcublas come from the runtime base,
# libcuda from the host through the NVIDIA container toolkit).

ARG CUDA_VERSION=12.4.1
ARG UBUNTU=ubuntu22.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
RUN apt-get update && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake make g++ binutils && \
    rm -rf /var/lib/apt/lists/*

ARG SOURCE_SHA256
COPY source.tar.gz /src/source.tar.gz
RUN test -n "$SOURCE_SHA256" || { echo "SOURCE_SHA256 build-arg is required" >&2; exit 1; }; \
    echo "$SOURCE_SHA256  /src/source.tar.gz" | sha256sum -c - && \
    mkdir -p /src/tree && tar -xzf /src/source.tar.gz -C /src/tree && \
    top=$(dirname "$(find /src/tree -maxdepth 3 -path '*/llama.cpp/CMakeLists.txt' | head -n1)") && \
    test -n "$top" && test "$top" != . && mv "$top" /src/llama.cpp && rm -rf /src/tree /src/source.tar.gz

ARG VARIANT=cuda
ARG LLAMA_BUILD_NUMBER=0
ARG LLAMA_BUILD_COMMIT=unknown
# Turing (75) to Hopper (90); override for newer cards.
ARG CUDA_ARCHITECTURES="75;80;86;89;90"
WORKDIR /src/llama.cpp
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release \
      -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHITECTURES" \
      -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF \
      -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
      -DLLAMA_BUILD_NUMBER="$LLAMA_BUILD_NUMBER" -DLLAMA_BUILD_COMMIT="$LLAMA_BUILD_COMMIT" \
      -DCMAKE_EXE_LINKER_FLAGS="-L/usr/local/cuda/lib64/stubs -Wl,--allow-shlib-undefined" && \
    cmake --build build --target llama-server -j"$(nproc)" && \
    mkdir -p /out && strip -o /out/llama-server build/bin/llama-server

# The Docker-native health check (see images/Dockerfile): static, no shell, no curl.
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS healthcheck
COPY healthcheck.c /src/healthcheck.c
RUN mkdir -p /out && \
    gcc -std=c11 -D_DEFAULT_SOURCE -O2 -Wall -Wextra -Werror -static \
      -o /out/llama-healthcheck /src/healthcheck.c && \
    strip /out/llama-healthcheck

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
ARG VARIANT=cuda
ARG SOURCE_SHA256
ARG LLAMA_BUILD_NUMBER=0
COPY --from=build /out/llama-server /usr/local/bin/llama-server
COPY --from=healthcheck /out/llama-healthcheck /usr/local/bin/llama-healthcheck
RUN groupadd -g 65532 nonroot && useradd -u 65532 -g 65532 -d /tmp -s /usr/sbin/nologin nonroot
LABEL org.opencontainers.image.title="llama-server" \
      org.opencontainers.image.description="llama.cpp llama-server, CUDA, built by llama-supervisor" \
      org.opencontainers.image.version="b${LLAMA_BUILD_NUMBER}" \
      org.opencontainers.image.licenses="MIT" \
      io.llama-supervisor.variant="${VARIANT}" \
      io.llama-supervisor.llama-build="${LLAMA_BUILD_NUMBER}" \
      io.llama-supervisor.source-sha256="${SOURCE_SHA256}"
ENV HOME=/tmp LLAMA_CACHE=/tmp NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=5s --start-period=600s --retries=3 \
    CMD ["/usr/local/bin/llama-healthcheck", "8080"]
ENTRYPOINT ["/usr/local/bin/llama-server"]
CMD ["--help"]
