# llama-server for NVIDIA GPUs (CUDA), built from verified llama.cpp source.
#
#   llama-supervisorctl build cuda --cuda-arch 90     (make image-cuda)
#
# Same context and build arguments as images/Dockerfile, plus CUDA_ARCHITECTURES
# (CMAKE_CUDA_ARCHITECTURES: one architecture keeps the compile affordable;
# `build cuda` sets it from the detected GPU or --cuda-arch).
#
# BUILDER: with a registry, the NVIDIA CUDA devel image (the default below);
# without one, `scripts/make-base-images cuda` makes llama-supervisor/cuda-builder
# from Debian's nvidia-cuda-toolkit (non-free, CUDA 11.8: up to sm_90, host
# compiler g++-11) and `build cuda` passes it. The rest is the same for both.
#
# The runtime image is FROM scratch: llama-server, exactly the shared libraries
# it links (found with ldd: the C/C++ runtime, libcudart, libcublas,
# libcublasLt), an ld.so.cache for them, and the static health check. The
# builder runs the binary chrooted into that root, so a missing library fails
# the build. libcuda.so.1 (the driver) is not linked (GGML_CUDA_NO_VMM): the
# NVIDIA container toolkit brings it from the host, and without it the CUDA
# runtime reports no device and llama-server runs on the CPU.
#
# As images/Dockerfile: the build path is mapped away, archives are deterministic,
# file times are SOURCE_DATE_EPOCH, and the Debian (or Ubuntu) versions of the
# packages that made and serve the binary (compilers, nvcc, cmake, and the
# package of every library ldd names) are in /usr/local/share/llama-server/toolchain.txt.

ARG BUILDER=nvidia/cuda:12.4.1-devel-ubuntu22.04

FROM ${BUILDER} AS build
RUN if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then \
      apt-get update && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake make g++ binutils && \
      rm -rf /var/lib/apt/lists/*; \
    fi

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
ARG CUDA_ARCHITECTURES=90
ARG SOURCE_DATE_EPOCH=0
ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}
COPY cuda-compat.cuh /src/cuda-compat.cuh
WORKDIR /src/llama.cpp
# With CUDA 11.x (Debian's 11.8): nvcc takes host compilers up to GCC 11, so where g++-11 is there the
# whole build uses GCC 11; and cuda-compat.cuh is pre-included into every CUDA compile: it defines the
# two device functions of programmatic dependent launch that llama.cpp uses from 11.8 on but that CUDA
# declares only from 12.0 (see the file). The compilers used are kept in /out/tools.txt for the
# toolchain record. Reproducible as in images/Dockerfile: the build path mapped away (for nvcc's host
# passes too), deterministic archives.
RUN test -n "$CUDA_ARCHITECTURES" || { echo "CUDA_ARCHITECTURES build-arg is required" >&2; exit 1; }; \
    cc=gcc; cxx=g++; cudaflags="-Xcompiler=-ffile-prefix-map=/src/llama.cpp=."; \
    if nvcc --version | grep -q 'release 11\.'; then \
      cudaflags="$cudaflags --pre-include=/src/cuda-compat.cuh"; \
      if command -v g++-11 >/dev/null; then cc=gcc-11; cxx=g++-11; fi; \
    fi && \
    repro="-ffile-prefix-map=/src/llama.cpp=. -fdebug-prefix-map=/src/llama.cpp=." && \
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_CUDA_HOST_COMPILER="$cxx" \
      -DCMAKE_C_FLAGS="$repro" -DCMAKE_CXX_FLAGS="$repro" -DCMAKE_CUDA_FLAGS="$cudaflags" \
      -DCMAKE_C_ARCHIVE_CREATE="<CMAKE_AR> qcD <TARGET> <LINK_FLAGS> <OBJECTS>" \
      -DCMAKE_CXX_ARCHIVE_CREATE="<CMAKE_AR> qcD <TARGET> <LINK_FLAGS> <OBJECTS>" \
      -DCMAKE_CUDA_ARCHIVE_CREATE="<CMAKE_AR> qcD <TARGET> <LINK_FLAGS> <OBJECTS>" \
      -DCMAKE_C_ARCHIVE_FINISH="<CMAKE_RANLIB> -D <TARGET>" -DCMAKE_CXX_ARCHIVE_FINISH="<CMAKE_RANLIB> -D <TARGET>" \
      -DCMAKE_CUDA_ARCHIVE_FINISH="<CMAKE_RANLIB> -D <TARGET>" \
      -DGGML_CUDA=ON -DGGML_CUDA_NO_VMM=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHITECTURES" \
      -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF \
      -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
      -DLLAMA_BUILD_NUMBER="$LLAMA_BUILD_NUMBER" -DLLAMA_BUILD_COMMIT="$LLAMA_BUILD_COMMIT" && \
    cmake --build build --target llama-server -j"$(nproc)" && \
    mkdir -p /out && strip -o /out/llama-server build/bin/llama-server && \
    for t in "$cc" "$cxx" nvcc cmake strip; do command -v "$t"; done > /out/tools.txt

# The runtime root: the binary and what ldd says it loads, each at the path ldd names; nothing else.
RUN set -e; root=/out/root; \
    mkdir -p $root/usr/local/bin $root/etc $root/tmp && cp /out/llama-server $root/usr/local/bin/ && \
    ldd /out/llama-server > /out/ldd.txt; cat /out/ldd.txt; \
    if grep -q 'not found' /out/ldd.txt; then echo "llama-server links a library that is not here" >&2; exit 1; fi; \
    libs=$(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' /out/ldd.txt); \
    for lib in $libs; do mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"; done; \
    for lib in $libs; do dirname "$lib"; done | sort -u > $root/etc/ld.so.conf; \
    ldconfig -r $root; \
    echo 'nonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin' > $root/etc/passwd; \
    echo 'nonroot:x:65532:' > $root/etc/group; \
    chmod 1777 $root/tmp; \
    echo "runtime libraries:"; for lib in $libs; do echo "  $lib"; done; \
    mkdir -p $root/usr/local/share/llama-server; \
    for f in $(cat /out/tools.txt) $libs; do dpkg -S "$(readlink -f "$f")" 2>/dev/null || dpkg -S "$f" || true; done \
      | cut -d: -f1 | tr ',' '\n' | sed 's/^ *//' | sort -u \
      | xargs -r dpkg-query -W -f '${Package} ${Version}\n' > $root/usr/local/share/llama-server/toolchain.txt; \
    echo "toolchain:"; sed 's/^/  /' $root/usr/local/share/llama-server/toolchain.txt; \
    chroot $root /usr/local/bin/llama-server --version; \
    find $root -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# The Docker-native health check (see images/Dockerfile): static, no shell, no curl. FROM the build
# stage, never FROM ${BUILDER} with the build stage's first step again: in a --no-cache build two stages
# that begin alike leave two cache candidates for that step, and the next cached build took the health
# check's and compiled llama-server again (tests/unit/test_dockerfile_cache.py).
FROM build AS healthcheck
COPY healthcheck.c gate.c /src/
RUN mkdir -p /out && \
    gcc -x c -std=c11 -D_DEFAULT_SOURCE -O2 -Wall -Wextra -Werror -static -ffile-prefix-map=/src=. \
      -o /out/llama-healthcheck /src/healthcheck.c && \
    gcc -x c -std=c11 -D_DEFAULT_SOURCE -O2 -Wall -Wextra -Werror -static -ffile-prefix-map=/src=. \
      -o /out/llama-gate /src/gate.c && \
    strip /out/llama-healthcheck /out/llama-gate && \
    touch -d "@$SOURCE_DATE_EPOCH" /out/llama-healthcheck /out/llama-gate

FROM scratch
ARG VARIANT=cuda
ARG SOURCE_SHA256
ARG LLAMA_BUILD_NUMBER=0
ARG CUDA_ARCHITECTURES=90
COPY --from=build /out/root/ /
COPY --from=healthcheck /out/llama-healthcheck /usr/local/bin/llama-healthcheck
COPY --from=healthcheck /out/llama-gate /usr/local/bin/llama-gate
LABEL org.opencontainers.image.title="llama-server" \
      org.opencontainers.image.description="llama.cpp llama-server, CUDA, built by llama-supervisor" \
      org.opencontainers.image.version="b${LLAMA_BUILD_NUMBER}" \
      org.opencontainers.image.licenses="MIT" \
      io.llama-supervisor.variant="${VARIANT}" \
      io.llama-supervisor.llama-build="${LLAMA_BUILD_NUMBER}" \
      io.llama-supervisor.source-sha256="${SOURCE_SHA256}" \
      io.llama-supervisor.cuda-architectures="${CUDA_ARCHITECTURES}"
ENV HOME=/tmp LLAMA_CACHE=/tmp NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=5s --start-period=600s --retries=3 \
    CMD ["/usr/local/bin/llama-healthcheck", "8080"]
ENTRYPOINT ["/usr/local/bin/llama-server"]
CMD ["--help"]
