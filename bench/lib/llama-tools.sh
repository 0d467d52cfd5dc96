# bench/lib/llama-tools.sh: builds llama.cpp's tools (llama-bench, llama-batched-bench,
# llama-server, ...) from the llama.cpp tree vendored in the llama-cpp-python sdist, into
# $LLAMA_TOOLS (outside the repository). Source it, then call
#
#   llama_tools_ensure llama-server [llama-bench ...]
#
# which builds only the targets whose binary is missing from $LLAMA_TOOLS/bin. The flags match
# bench/engine/run: GGML_NATIVE=OFF with AVX2/FMA/F16C/AVX-512 (F, VBMI, VNNI, BF16) on and
# GGML_AVX_VNNI=OFF (the VEX AVX-VNNI of Intel client cores; AMD Zen 4 lacks it and the
# binaries die with SIGILL there). The server's web UI is not embedded (no npm, no download).
#
# Environment: LLAMA_TOOLS (default ~/.cache/tandem/llama-tools), LLAMA_CPP_PYTHON_VERSION
# (default 0.3.36), JOBS (default nproc).

LLAMA_TOOLS=${LLAMA_TOOLS:-$HOME/.cache/tandem/llama-tools}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}

llama_tools_log() { echo "llama-tools: $*" >&2; }

# llama_tools_source: prints the path of the unpacked llama.cpp tree, downloading and
# unpacking the sdist first when needed.
llama_tools_source() {
  local src="$LLAMA_TOOLS/src"
  local tree="$src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
  if [ ! -f "$tree/CMakeLists.txt" ]; then
    mkdir -p "$src"
    llama_tools_log "downloading llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (sdist) into $src"
    python3 -m pip download --no-deps --no-binary :all: --quiet --progress-bar off \
      -d "$src" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >&2
    tar xzf "$src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$src"
  fi
  [ -f "$tree/CMakeLists.txt" ] || { llama_tools_log "no llama.cpp tree in the sdist"; return 1; }
  echo "$tree"
}

# llama_tools_ensure TARGET...: builds the missing targets and copies them to $LLAMA_TOOLS/bin.
llama_tools_ensure() {
  local missing=() t
  for t in "$@"; do [ -x "$LLAMA_TOOLS/bin/$t" ] || missing+=("$t"); done
  ((${#missing[@]})) || return 0
  local tree bld="$LLAMA_TOOLS/build"
  tree=$(llama_tools_source) || return 1
  mkdir -p "$LLAMA_TOOLS/bin"
  llama_tools_log "building ${missing[*]} from llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION into $LLAMA_TOOLS"
  cmake -S "$tree" -B "$bld" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
    -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_OPENMP=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF >&2 || return 1
  cmake --build "$bld" --target "${missing[@]}" -j "${JOBS:-$(nproc)}" >&2 || return 1
  for t in "${missing[@]}"; do cp "$bld/bin/$t" "$LLAMA_TOOLS/bin/"; done
  echo "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" > "$LLAMA_TOOLS/bin/VERSION"
}
